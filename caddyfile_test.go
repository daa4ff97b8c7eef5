package caddylb_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	caddylb "github.com/golb/caddy-lb"
)

// unmarshalCase is a load_balancer directive and the handler it gives (as
// JSON) or the error it fails with.
type unmarshalCase struct {
	name  string
	input string

	want string // the handler's JSON, when parsing succeeds

	wantErr []string // substrings of the error, when parsing fails
	line    int      // the line the error must point at
	is      error    // a sentinel the error must wrap, if any
}

// inApp is a load_balancer with one app "a.example.com" whose block holds
// lines; the first of them is on line 3.
func inApp(lines ...string) string {
	return "load_balancer {\n\tapp a.example.com {\n\t\t" + strings.Join(lines, "\n\t\t") + "\n\t}\n}"
}

var unmarshalCases = []unmarshalCase{
	// The app-block form.
	{
		name: "app blocks with every option",
		input: `load_balancer {
	app api.example.com {
		strategy round_robin
		health_uri /health
		timeout 10s
		health_check_cooldown 30s
		instances http://127.0.0.1:8081 http://127.0.0.1:8082
		instances http://127.0.0.1:8083
	}
	app payments.example.com {
		strategy least_connections
		instances http://127.0.0.1:9081 http://127.0.0.1:9082
	}
}`,
		want: `{"apps":[
			{"host":"api.example.com","strategy":"round_robin","health_uri":"/health","timeout":"10s","health_check_cooldown":"30s",
			 "instances":[{"url":"http://127.0.0.1:8081"},{"url":"http://127.0.0.1:8082"},{"url":"http://127.0.0.1:8083"}]},
			{"host":"payments.example.com","strategy":"least_connections",
			 "instances":[{"url":"http://127.0.0.1:9081"},{"url":"http://127.0.0.1:9082"}]}]}`,
	},
	{
		name:  "gRPC health checks of h2c instances",
		input: inApp("instances h2c://127.0.0.1:50051 h2c://127.0.0.1:50052", "health_grpc"),
		want:  `{"apps":[{"host":"a.example.com","health_grpc":{},"instances":[{"url":"h2c://127.0.0.1:50051"},{"url":"h2c://127.0.0.1:50052"}]}]}`,
	},
	{
		name:  "gRPC health checks of a service, TLS options",
		input: inApp("instances https://127.0.0.1:8443", "health_grpc my.Service", "tls_server_name backend.internal", "tls_insecure_skip_verify"),
		want: `{"apps":[{"host":"a.example.com","health_grpc":{"service":"my.Service"},"instances":[{"url":"https://127.0.0.1:8443"}],
			"tls":{"insecure_skip_verify":true,"server_name":"backend.internal"}}]}`,
	},
	{
		name:  "overload protection and retry_status",
		input: inApp("instances 127.0.0.1:1", "max_requests 8", "max_queue 100", "queue_timeout 2s", "retry_status 503 429 5xx"),
		want: `{"apps":[{"host":"a.example.com","instances":[{"url":"127.0.0.1:1"}],"max_queue":100,"max_requests":8,
			"queue_timeout":"2s","retry_status":["503","429","5xx"]}]}`,
	},
	{
		name:    "health_grpc with two services",
		input:   inApp("instances h2c://127.0.0.1:1", "health_grpc a b"),
		wantErr: []string{`app "a.example.com": health_grpc: want at most one service name, got 2: ["a" "b"]`},
		line:    4,
	},
	{
		name:    "tls_trust_pool without file",
		input:   inApp("instances https://127.0.0.1:1", "tls_trust_pool ca.pem"),
		wantErr: []string{`app "a.example.com": tls_trust_pool: want file <pem_files...>`},
		line:    4,
	},
	{
		name:  "app with instances only",
		input: inApp("instances 127.0.0.1:8081"),
		want:  `{"apps":[{"host":"a.example.com","instances":[{"url":"127.0.0.1:8081"}]}]}`,
	},
	{
		name: "wildcard and catch-all hosts, kept as written",
		input: `load_balancer {
	app *.Example.com {
		instances 127.0.0.1:1
	}
	app * {
		instances 127.0.0.1:2
	}
	app [::1] {
		instances 127.0.0.1:3
	}
}`,
		want: `{"apps":[
			{"host":"*.Example.com","instances":[{"url":"127.0.0.1:1"}]},
			{"host":"*","instances":[{"url":"127.0.0.1:2"}]},
			{"host":"[::1]","instances":[{"url":"127.0.0.1:3"}]}]}`,
	},
	{
		name:  "instances without a scheme, with a path, with https, kept as written",
		input: inApp("instances 127.0.0.1:8081 localhost:8082/base/ https://[::1]:8443", `instances "http://user:pass@127.0.0.1:8084"`),
		want: `{"apps":[{"host":"a.example.com","instances":[
			{"url":"127.0.0.1:8081"},{"url":"localhost:8082/base/"},{"url":"https://[::1]:8443"},{"url":"http://user:pass@127.0.0.1:8084"}]}]}`,
	},
	{
		name:  "durations in every unit Caddy knows, encoded back as Go durations",
		input: inApp("timeout 1m30s", "health_check_cooldown 1d", "instances 127.0.0.1:1"),
		want:  `{"apps":[{"host":"a.example.com","timeout":"1m30s","health_check_cooldown":"24h0m0s","instances":[{"url":"127.0.0.1:1"}]}]}`,
	},
	{
		name:  "sub-second duration",
		input: inApp("timeout 250ms", "instances 127.0.0.1:1"),
		want:  `{"apps":[{"host":"a.example.com","timeout":"250ms","instances":[{"url":"127.0.0.1:1"}]}]}`,
	},
	{
		name:  "instance without scheme but with a URL in its query",
		input: inApp("instances 127.0.0.1:8080/?next=http://x"),
		want:  `{"apps":[{"host":"a.example.com","instances":[{"url":"127.0.0.1:8080/?next=http://x"}]}]}`,
	},
	{
		name:  "health_uri with a query",
		input: inApp("health_uri /status?full=1", "instances 127.0.0.1:1"),
		want:  `{"apps":[{"host":"a.example.com","health_uri":"/status?full=1","instances":[{"url":"127.0.0.1:1"}]}]}`,
	},
	{
		name:  "empty block after an option is harmless",
		input: inApp("strategy round_robin {", "}", "instances 127.0.0.1:1"),
		want:  `{"apps":[{"host":"a.example.com","strategy":"round_robin","instances":[{"url":"127.0.0.1:1"}]}]}`,
	},

	// Strategies, their options, weights.
	{
		name: "every strategy option, instance lines with weights in line order",
		input: `load_balancer {
	app api.example.com {
		strategy hash
		hash_key header:X-User
		sticky_cookie lb
		sticky_cookie_secret s3cret
		instance http://127.0.0.1:8081 weight 5
		instances http://127.0.0.1:8082 http://127.0.0.1:8083
		instance http://127.0.0.1:8084
		instance http://127.0.0.1:8085 weight 0
	}
	app lat.example.com {
		strategy least_latency
		latency_decay 5s
		instance 127.0.0.1:9081 weight 2
		instance 127.0.0.1:9082 weight 1
	}
}`,
		want: `{"apps":[
			{"host":"api.example.com","strategy":"hash","hash_key":"header:X-User","sticky_cookie":"lb","sticky_cookie_secret":"s3cret",
			 "instances":[{"url":"http://127.0.0.1:8081","weight":5},{"url":"http://127.0.0.1:8082"},{"url":"http://127.0.0.1:8083"},
			              {"url":"http://127.0.0.1:8084"},{"url":"http://127.0.0.1:8085","weight":0}]},
			{"host":"lat.example.com","strategy":"least_latency","latency_decay":"5s",
			 "instances":[{"url":"127.0.0.1:9081","weight":2},{"url":"127.0.0.1:9082","weight":1}]}]}`,
	},
	{
		name:  "each strategy by name",
		input: "load_balancer {\n\tapp a {\n\t\tstrategy p2c\n\t\tinstances 127.0.0.1:1\n\t}\n\tapp b {\n\t\tstrategy random\n\t\tinstances 127.0.0.1:1\n\t}\n\tapp c {\n\t\tstrategy first\n\t\tinstances 127.0.0.1:1\n\t}\n}",
		want: `{"apps":[{"host":"a","strategy":"p2c","instances":[{"url":"127.0.0.1:1"}]},
			{"host":"b","strategy":"random","instances":[{"url":"127.0.0.1:1"}]},
			{"host":"c","strategy":"first","instances":[{"url":"127.0.0.1:1"}]}]}`,
	},
	{
		name:  "hash_key given before strategy",
		input: inApp("hash_key cookie:session", "strategy hash", "instances 127.0.0.1:1"),
		want:  `{"apps":[{"host":"a.example.com","strategy":"hash","hash_key":"cookie:session","instances":[{"url":"127.0.0.1:1"}]}]}`,
	},
	{
		name:  "hash with each kind of key",
		input: "load_balancer {\n\tapp a {\n\t\tstrategy hash\n\t\thash_key uri\n\t\tinstances 127.0.0.1:1\n\t}\n\tapp b {\n\t\tstrategy hash\n\t\thash_key query:id\n\t\tinstances 127.0.0.1:1\n\t}\n\tapp c {\n\t\tstrategy hash\n\t\thash_key client_ip\n\t\tinstances 127.0.0.1:1\n\t}\n}",
		want: `{"apps":[{"host":"a","strategy":"hash","hash_key":"uri","instances":[{"url":"127.0.0.1:1"}]},
			{"host":"b","strategy":"hash","hash_key":"query:id","instances":[{"url":"127.0.0.1:1"}]},
			{"host":"c","strategy":"hash","hash_key":"client_ip","instances":[{"url":"127.0.0.1:1"}]}]}`,
	},
	{
		name:  "sticky_cookie with the default strategy",
		input: inApp("sticky_cookie srv", "instances 127.0.0.1:1 127.0.0.1:2"),
		want:  `{"apps":[{"host":"a.example.com","sticky_cookie":"srv","instances":[{"url":"127.0.0.1:1"},{"url":"127.0.0.1:2"}]}]}`,
	},
	{
		name:  "shorthand: instance lines after arguments",
		input: "load_balancer 127.0.0.1:1 {\n\tinstance 127.0.0.1:2 weight 3\n\tstrategy p2c\n}",
		want:  `{"apps":[{"strategy":"p2c","instances":[{"url":"127.0.0.1:1"},{"url":"127.0.0.1:2","weight":3}]}]}`,
	},
	{
		name: "failover tiers and bounded-load hashing",
		input: inApp("instance 127.0.0.1:1 weight 2", "instance 127.0.0.1:2 priority 1 weight 3", "instance 127.0.0.1:3 priority 1",
			"failover_threshold 50", "strategy hash", "hash_balance 1.25"),
		want: `{"apps":[{"host":"a.example.com","strategy":"hash","hash_balance":1.25,"failover_threshold":50,"instances":[
			{"url":"127.0.0.1:1","weight":2},{"url":"127.0.0.1:2","weight":3,"priority":1},{"url":"127.0.0.1:3","priority":1}]}]}`,
	},
	{
		name:  "largest weight",
		input: inApp("instance 127.0.0.1:1 weight 1000000"),
		want:  `{"apps":[{"host":"a.example.com","instances":[{"url":"127.0.0.1:1","weight":1000000}]}]}`,
	},

	// The shorthand form: one catch-all app.
	{
		name:  "shorthand: instances as arguments",
		input: `load_balancer http://127.0.0.1:7081 127.0.0.1:7082`,
		want:  `{"apps":[{"instances":[{"url":"http://127.0.0.1:7081"},{"url":"127.0.0.1:7082"}]}]}`,
	},
	{
		name: "shorthand: arguments and options",
		input: `load_balancer http://127.0.0.1:7081 http://127.0.0.1:7082 {
	strategy least_connections
	health_uri /healthz
	timeout 5s
	health_check_cooldown 2s
}`,
		want: `{"apps":[{"strategy":"least_connections","health_uri":"/healthz","timeout":"5s","health_check_cooldown":"2s",
			"instances":[{"url":"http://127.0.0.1:7081"},{"url":"http://127.0.0.1:7082"}]}]}`,
	},
	{
		name: "shorthand: instances lines append to the arguments",
		input: `load_balancer 127.0.0.1:1 {
	instances 127.0.0.1:2 127.0.0.1:3
	strategy round_robin
	instances 127.0.0.1:4
}`,
		want: `{"apps":[{"strategy":"round_robin",
			"instances":[{"url":"127.0.0.1:1"},{"url":"127.0.0.1:2"},{"url":"127.0.0.1:3"},{"url":"127.0.0.1:4"}]}]}`,
	},
	{
		name: "shorthand: block only",
		input: `load_balancer {
	timeout 3s
	instances 127.0.0.1:1
}`,
		want: `{"apps":[{"timeout":"3s","instances":[{"url":"127.0.0.1:1"}]}]}`,
	},

	// Errors in options.
	{
		name:    "unknown subdirective in an app",
		input:   inApp("instances 127.0.0.1:1", "max_conns 3"),
		wantErr: []string{`app "a.example.com": unrecognized subdirective "max_conns"`, "strategy, hash_key, latency_decay", "instances, dynamic_scheme, dynamic_refresh, instance, dynamic, tls_client_auth, tls_trust_pool, tls_insecure_skip_verify, tls_server_name)"},
		line:    4,
	},
	{
		name:    "unknown subdirective in the shorthand",
		input:   "load_balancer 127.0.0.1:1 {\n\tmax_conns 3\n}",
		wantErr: []string{`app "*": unrecognized subdirective "max_conns" (want one of strategy,`},
		line:    2,
	},
	{
		name:    "unknown subdirective before any app",
		input:   "load_balancer {\n\tapps a.example.com {\n\t}\n}",
		wantErr: []string{`load_balancer: unrecognized subdirective "apps" (want app, pool or one of`},
		line:    2,
	},
	{
		name:    "app inside an app",
		input:   inApp("app b.example.com {", "}"),
		wantErr: []string{`app "a.example.com": unrecognized subdirective "app"`},
		line:    3,
	},
	{
		name:    "strategy without argument",
		input:   inApp("strategy"),
		wantErr: []string{`app "a.example.com": strategy: want 1 argument, got none`},
		line:    3,
	},
	{
		name:    "strategy with two arguments",
		input:   inApp("strategy round_robin least_connections"),
		wantErr: []string{`app "a.example.com": strategy: want 1 argument, got 2: ["round_robin" "least_connections"]`},
		line:    3,
	},
	{
		name:    "unknown strategy",
		input:   inApp("strategy fastest"),
		wantErr: []string{`app "a.example.com": strategy: unknown strategy "fastest"`, "least_connections", "least_latency", "p2c"},
		line:    3,
		is:      caddylb.ErrUnknownStrategy,
	},
	{
		name:    "health_uri without argument",
		input:   inApp("instances 127.0.0.1:1", "health_uri"),
		wantErr: []string{`app "a.example.com": health_uri: want 1 argument, got none`},
		line:    4,
	},
	{
		name:    "health_uri without a leading slash",
		input:   inApp("health_uri health"),
		wantErr: []string{`app "a.example.com": health_uri: health_uri must be a path starting with '/', got "health"`},
		line:    3,
		is:      caddylb.ErrInvalidHealthURI,
	},
	{
		name:    "health_uri that parses as a host",
		input:   inApp("health_uri //health"),
		wantErr: []string{`app "a.example.com": health_uri: health_uri must be a path starting with '/', got "//health"`},
		line:    3,
		is:      caddylb.ErrInvalidHealthURI,
	},
	{
		name:    "instance on port 0",
		input:   inApp("instances 127.0.0.1:0"),
		wantErr: []string{`app "a.example.com": instances[0].url: invalid URL "127.0.0.1:0": bad port "0"`},
		line:    3,
		is:      caddylb.ErrInvalidURL,
	},
	{
		name:    "timeout without argument",
		input:   inApp("timeout"),
		wantErr: []string{`app "a.example.com": timeout: want 1 argument, got none`},
		line:    3,
	},
	{
		name:    "timeout not a duration",
		input:   inApp("timeout soon"),
		wantErr: []string{`app "a.example.com": timeout: bad duration value "soon": time: invalid duration`},
		line:    3,
	},
	{
		name:    "timeout without unit",
		input:   inApp("timeout 10"),
		wantErr: []string{`app "a.example.com": timeout: bad duration value "10": time: missing unit`},
		line:    3,
	},
	{
		name:    "timeout with bad days",
		input:   inApp("timeout xd"),
		wantErr: []string{`app "a.example.com": timeout: bad duration value "xd"`},
		line:    3,
	},
	{
		name:    "timeout zero",
		input:   inApp("timeout 0s"),
		wantErr: []string{`app "a.example.com": timeout: duration must be positive, got 0s`},
		line:    3,
		is:      caddylb.ErrInvalidDuration,
	},
	{
		name:    "timeout negative",
		input:   inApp("timeout -5s"),
		wantErr: []string{`app "a.example.com": timeout: duration must be positive, got -5s`},
		line:    3,
		is:      caddylb.ErrInvalidDuration,
	},
	{
		name:    "health_check_cooldown without argument",
		input:   inApp("health_check_cooldown"),
		wantErr: []string{`app "a.example.com": health_check_cooldown: want 1 argument, got none`},
		line:    3,
	},
	{
		name:    "health_check_cooldown not a duration",
		input:   inApp("health_check_cooldown 5x"),
		wantErr: []string{`app "a.example.com": health_check_cooldown: bad duration value "5x"`},
		line:    3,
	},
	{
		name:    "health_check_cooldown zero",
		input:   inApp("health_check_cooldown 0"),
		wantErr: []string{`app "a.example.com": health_check_cooldown: duration must be positive, got 0s`},
		line:    3,
		is:      caddylb.ErrInvalidDuration,
	},
	{
		name:    "health_check_cooldown negative",
		input:   inApp("health_check_cooldown -1m"),
		wantErr: []string{`app "a.example.com": health_check_cooldown: duration must be positive`},
		line:    3,
		is:      caddylb.ErrInvalidDuration,
	},
	{
		name:    "shorthand: bad duration names the catch-all",
		input:   "load_balancer 127.0.0.1:1 {\n\ttimeout 0s\n}",
		wantErr: []string{`app "*": timeout: duration must be positive`},
		line:    2,
		is:      caddylb.ErrInvalidDuration,
	},
	{
		name:    "instances without argument",
		input:   inApp("instances 127.0.0.1:1", "instances"),
		wantErr: []string{`app "a.example.com": instances: want one or more URLs`},
		line:    4,
	},
	{
		name:    "shorthand: instances without argument",
		input:   "load_balancer {\n\tinstances\n}",
		wantErr: []string{`app "*": instances: want one or more URLs`},
		line:    2,
	},
	{
		name:    "instance with a bad scheme",
		input:   inApp("instances 127.0.0.1:1 ftp://127.0.0.1:2"),
		wantErr: []string{`app "a.example.com": instances[1].url: scheme must be http, https or h2c, got "ftp" in "ftp://127.0.0.1:2"`},
		line:    3,
		is:      caddylb.ErrInvalidScheme,
	},
	{
		name:    "instance without a host",
		input:   inApp("instances http://"),
		wantErr: []string{`app "a.example.com": instances[0].url: URL has no host: "http://"`},
		line:    3,
		is:      caddylb.ErrMissingHost,
	},
	{
		name:    "instance with a bad port",
		input:   "load_balancer 127.0.0.1:99999",
		wantErr: []string{`app "*": instances[0].url: invalid URL "127.0.0.1:99999": bad port "99999"`},
		line:    1,
		is:      caddylb.ErrInvalidURL,
	},
	{
		name:    "option with a block",
		input:   inApp("instances 127.0.0.1:1 {", "127.0.0.1:2", "}"),
		wantErr: []string{`app "a.example.com": instances: unexpected block`},
		line:    3,
	},

	// Errors in strategy options and weights.
	{
		name:    "instance without argument",
		input:   inApp("instance"),
		wantErr: []string{`app "a.example.com": instance: want a URL, optionally followed by weight <n> and priority <n>, got none`},
		line:    3,
	},
	{
		name:    "instance with two URLs",
		input:   inApp("instance 127.0.0.1:1 127.0.0.1:2"),
		wantErr: []string{`app "a.example.com": instance: want a URL, optionally followed by weight <n> and priority <n>, got 2: ["127.0.0.1:1" "127.0.0.1:2"]`},
		line:    3,
	},
	{
		name:    "instance with weight but no number",
		input:   inApp("instance 127.0.0.1:1 weight"),
		wantErr: []string{`app "a.example.com": instance: want a URL, optionally followed by weight <n> and priority <n>, got 2`},
		line:    3,
	},
	{
		name:    "instance with a misspelt weight",
		input:   inApp("instance 127.0.0.1:1 wieght 2"),
		wantErr: []string{`app "a.example.com": instance: unknown setting "wieght" (want weight <n> or priority <n>)`},
		line:    3,
	},
	{
		name:    "instance with weight twice",
		input:   inApp("instance 127.0.0.1:1 weight 2 weight 3"),
		wantErr: []string{`app "a.example.com": instance: weight already specified`},
		line:    3,
	},
	{
		name:    "negative priority",
		input:   inApp("instances 127.0.0.1:1 127.0.0.1:2", "instance 127.0.0.1:3 weight 2 priority -1"),
		wantErr: []string{`app "a.example.com": instances[2].priority: invalid priority: want an integer from 0 to 65535, got -1`},
		line:    4,
	},
	{
		name:    "priority too large",
		input:   inApp("instance 127.0.0.1:2 priority 65536"),
		wantErr: []string{`app "a.example.com": instances[0].priority: invalid priority: want an integer from 0 to 65535, got 65536`},
		line:    3,
	},
	{
		name:    "priority not a number",
		input:   inApp("instance 127.0.0.1:2 priority first"),
		wantErr: []string{`app "a.example.com": instance: priority: want an integer, got "first"`},
		line:    3,
	},
	{
		name:    "failover_threshold 0",
		input:   inApp("instances 127.0.0.1:1", "failover_threshold 0"),
		wantErr: []string{`app "a.example.com": failover_threshold: invalid percentage: want 1 to 100, got 0`},
		line:    4,
	},
	{
		name:    "failover_threshold above 100",
		input:   inApp("instances 127.0.0.1:1", "failover_threshold 101"),
		wantErr: []string{`app "a.example.com": failover_threshold: invalid percentage: want 1 to 100, got 101`},
		line:    4,
	},
	{
		name:    "hash_balance of 1",
		input:   inApp("instances 127.0.0.1:1", "strategy hash", "hash_balance 1.0"),
		wantErr: []string{`app "a.example.com": hash_balance: invalid option: want more than 1.0, got 1`},
		line:    5,
	},
	{
		name:    "hash_balance without strategy hash",
		input:   inApp("instances 127.0.0.1:1", "strategy round_robin", "hash_balance 1.25"),
		wantErr: []string{`app "a.example.com": hash_balance: option does not apply: strategy round_robin does not use it (only hash does)`},
		line:    5,
	},
	{
		name:    "negative weight",
		input:   inApp("instances 127.0.0.1:1", "instance 127.0.0.1:2 weight -1"),
		wantErr: []string{`app "a.example.com": instances[1].weight: invalid weight: want an integer from 0 to 1000000, got -1`},
		line:    4,
	},
	{
		name:    "weight too large",
		input:   inApp("instance 127.0.0.1:2 weight 1000001"),
		wantErr: []string{`app "a.example.com": instances[0].weight: invalid weight: want an integer from 0 to 1000000, got 1000001`},
		line:    3,
	},
	{
		name:    "weight not a number",
		input:   inApp("instance 127.0.0.1:2 weight 1.5"),
		wantErr: []string{`app "a.example.com": instance: weight: want an integer, got "1.5"`},
		line:    3,
	},
	{
		name:    "instance with a bad URL",
		input:   inApp("instance ftp://127.0.0.1:2 weight 2"),
		wantErr: []string{`app "a.example.com": instances[0].url: scheme must be http, https or h2c, got "ftp" in "ftp://127.0.0.1:2"`},
		line:    3,
		is:      caddylb.ErrInvalidScheme,
	},
	{
		name:    "hash_key of an unknown kind",
		input:   inApp("strategy hash", "hash_key ip"),
		wantErr: []string{`app "a.example.com": hash_key: invalid hash_key "ip": unknown kind "ip"; want client_ip, header:NAME, cookie:NAME, query:NAME or uri`},
		line:    4,
		is:      caddylb.ErrInvalidHashKey,
	},
	{
		name:    "hash_key header without a name",
		input:   inApp("strategy hash", "hash_key header:"),
		wantErr: []string{`app "a.example.com": hash_key: invalid hash_key "header:": no name after header:`},
		line:    4,
		is:      caddylb.ErrInvalidHashKey,
	},
	{
		name:    "hash_key with another strategy points at hash_key",
		input:   inApp("hash_key uri", "instances 127.0.0.1:1", "strategy p2c"),
		wantErr: []string{`app "a.example.com": hash_key: option does not apply: strategy p2c does not use it (only hash does)`},
		line:    3,
		is:      caddylb.ErrInapplicableOption,
	},
	{
		name:    "hash_key with the default strategy",
		input:   "load_balancer 127.0.0.1:1 {\n\ttimeout 1s\n\thash_key uri\n}",
		wantErr: []string{`app "*": hash_key: option does not apply: strategy round_robin does not use it`},
		line:    3,
		is:      caddylb.ErrInapplicableOption,
	},
	{
		name:    "hash_key twice",
		input:   inApp("hash_key uri", "hash_key uri"),
		wantErr: []string{`app "a.example.com": hash_key already specified`},
		line:    4,
	},
	{
		name:    "latency_decay with another strategy",
		input:   inApp("strategy least_connections", "instances 127.0.0.1:1", "latency_decay 1s"),
		wantErr: []string{`app "a.example.com": latency_decay: option does not apply: strategy least_connections does not use it (only least_latency does)`},
		line:    5,
		is:      caddylb.ErrInapplicableOption,
	},
	{
		name:    "latency_decay zero",
		input:   inApp("strategy least_latency", "latency_decay 0s"),
		wantErr: []string{`app "a.example.com": latency_decay: duration must be positive, got 0s`},
		line:    4,
		is:      caddylb.ErrInvalidDuration,
	},
	{
		name:    "latency_decay not a duration",
		input:   inApp("strategy least_latency", "latency_decay fast"),
		wantErr: []string{`app "a.example.com": latency_decay: bad duration value "fast"`},
		line:    4,
	},
	{
		name:    "sticky_cookie not a cookie name",
		input:   inApp(`sticky_cookie "a b"`),
		wantErr: []string{`app "a.example.com": sticky_cookie: invalid cookie name "a b"`},
		line:    3,
		is:      caddylb.ErrInvalidCookieName,
	},
	{
		name:    "sticky_cookie without argument",
		input:   inApp("sticky_cookie"),
		wantErr: []string{`app "a.example.com": sticky_cookie: want 1 argument, got none`},
		line:    3,
	},
	{
		name:    "sticky_cookie_secret without sticky_cookie",
		input:   inApp("instances 127.0.0.1:1", "sticky_cookie_secret s3cret"),
		wantErr: []string{`app "a.example.com": sticky_cookie_secret: option does not apply: it signs the sticky_cookie, which is not set`},
		line:    4,
		is:      caddylb.ErrInapplicableOption,
	},
	{
		name:    "the same instance twice",
		input:   inApp("instances 127.0.0.1:1", "instance http://127.0.0.1:1 weight 2"),
		wantErr: []string{`app "a.example.com": instances[1].url: duplicate instance: "http://127.0.0.1:1" is instances[0] already; give it a weight instead`},
		line:    4,
		is:      caddylb.ErrDuplicateInstance,
	},

	// Options given twice.
	{
		name:    "strategy twice",
		input:   inApp("strategy round_robin", "instances 127.0.0.1:1", "strategy least_connections"),
		wantErr: []string{`app "a.example.com": strategy already specified`},
		line:    5,
	},
	{
		name:    "health_uri twice",
		input:   inApp("health_uri /a", "health_uri /a"),
		wantErr: []string{`app "a.example.com": health_uri already specified`},
		line:    4,
	},
	{
		name:    "timeout twice",
		input:   inApp("timeout 1s", "timeout 2s"),
		wantErr: []string{`app "a.example.com": timeout already specified`},
		line:    4,
	},
	{
		name:    "health_check_cooldown twice",
		input:   inApp("health_check_cooldown 1s", "health_check_cooldown 1s"),
		wantErr: []string{`app "a.example.com": health_check_cooldown already specified`},
		line:    4,
	},
	{
		name:    "shorthand: option twice",
		input:   "load_balancer 127.0.0.1:1 {\n\tstrategy round_robin\n\tstrategy round_robin\n}",
		wantErr: []string{`app "*": strategy already specified`},
		line:    3,
	},

	// app blocks.
	{
		name:    "app without host",
		input:   "load_balancer {\n\tapp {\n\t\tinstances 127.0.0.1:1\n\t}\n}",
		wantErr: []string{`app: want one host (a host name, *.domain or *), got none`},
		line:    2,
	},
	{
		name:    "app with two hosts",
		input:   "load_balancer {\n\tapp a.example.com b.example.com {\n\t\tinstances 127.0.0.1:1\n\t}\n}",
		wantErr: []string{`app: want one host`, `got 2: ["a.example.com" "b.example.com"]`},
		line:    2,
	},
	{
		name:    "app host with a port",
		input:   "load_balancer {\n\tapp a.example.com:8080 {\n\t\tinstances 127.0.0.1:1\n\t}\n}",
		wantErr: []string{`app "a.example.com:8080": host: invalid host`},
		line:    2,
		is:      caddylb.ErrInvalidHost,
	},
	{
		name:    "two apps with one host",
		input:   "load_balancer {\n\tapp a.example.com {\n\t\tinstances 127.0.0.1:1\n\t}\n\tapp A.example.com. {\n\t\tinstances 127.0.0.1:2\n\t}\n}",
		wantErr: []string{`app "A.example.com.": host: duplicate app host: the app at Testfile:2 already serves it`},
		line:    5,
		is:      caddylb.ErrDuplicateHost,
	},
	{
		name:    "two catch-all apps",
		input:   "load_balancer {\n\tapp * {\n\t\tinstances 127.0.0.1:1\n\t}\n\tapp \"\" {\n\t\tinstances 127.0.0.1:2\n\t}\n}",
		wantErr: []string{`app "*": host: duplicate app host: the app at Testfile:2 already serves it`},
		line:    5,
		is:      caddylb.ErrDuplicateHost,
	},

	// Mixing the two forms.
	{
		name:    "arguments, then an app block",
		input:   "load_balancer 127.0.0.1:1 {\n\tapp a.example.com {\n\t\tinstances 127.0.0.1:2\n\t}\n}",
		wantErr: []string{`app "a.example.com": app blocks cannot be mixed with instances given as arguments of load_balancer`},
		line:    2,
	},
	{
		name:    "an option, then an app block",
		input:   "load_balancer {\n\tstrategy round_robin\n\tapp a.example.com {\n\t\tinstances 127.0.0.1:2\n\t}\n}",
		wantErr: []string{`app "a.example.com": app blocks cannot be mixed with app options directly in the load_balancer block (strategy at Testfile:2)`},
		line:    3,
	},
	{
		name:    "an instances line, then an app block",
		input:   "load_balancer {\n\tinstances 127.0.0.1:1\n\tapp a.example.com {\n\t\tinstances 127.0.0.1:2\n\t}\n}",
		wantErr: []string{`app "a.example.com": app blocks cannot be mixed with app options directly in the load_balancer block (instances at Testfile:2)`},
		line:    3,
	},
	{
		name:    "an app block, then an option",
		input:   "load_balancer {\n\tapp a.example.com {\n\t\tinstances 127.0.0.1:2\n\t}\n\ttimeout 5s\n}",
		wantErr: []string{`load_balancer: timeout: app options cannot be mixed with app blocks (first: app "a.example.com" at Testfile:2); move it into an app block`},
		line:    5,
	},
	{
		name:    "an app block, then an instances line",
		input:   "load_balancer {\n\tapp * {\n\t\tinstances 127.0.0.1:2\n\t}\n\tinstances 127.0.0.1:3\n}",
		wantErr: []string{`load_balancer: instances: app options cannot be mixed with app blocks (first: app "*" at Testfile:2)`},
		line:    5,
	},

	// Health checks, passive checks and retries.
	{
		name: "every active health check option",
		input: inApp(
			"health_uri /health",
			"health_method POST",
			"health_headers {",
			"	Host health.internal",
			`	X-Probe a "b c"`,
			"	x-probe d",
			"}",
			"health_port 9000",
			"health_status 200 204 3xx",
			`health_body "^ok\s*$"`,
			"health_passes 3",
			"health_fails 1000",
			"initially_unhealthy",
			"instances 127.0.0.1:1",
		),
		want: `{"apps":[{"host":"a.example.com","health_uri":"/health","health_method":"POST",
			"health_headers":{"Host":["health.internal"],"X-Probe":["a","b c","d"]},
			"health_port":9000,"health_status":["200","204","3xx"],"health_body":"^ok\\s*$",
			"health_passes":3,"health_fails":1000,"initially_unhealthy":true,
			"instances":[{"url":"127.0.0.1:1"}]}]}`,
	},
	{
		name:  "health options before health_uri",
		input: inApp("initially_unhealthy", "health_passes 1", "health_uri /h", "instances 127.0.0.1:1"),
		want:  `{"apps":[{"host":"a.example.com","initially_unhealthy":true,"health_passes":1,"health_uri":"/h","instances":[{"url":"127.0.0.1:1"}]}]}`,
	},
	{
		name:  "passive checks and retries, explicit zeros kept",
		input: inApp("max_fails 0", "max_ejected_percent 0", "panic_threshold 0", "retries 0", "try_duration 0", "retry_budget_percent 0", "slow_start 0s", "instances 127.0.0.1:1"),
		want: `{"apps":[{"host":"a.example.com","max_fails":0,"max_ejected_percent":0,"retries":0,"try_duration":"0s",
			"retry_budget_percent":0,"slow_start":"0s","instances":[{"url":"127.0.0.1:1"}]}]}`,
	},
	{
		name: "passive checks and retries",
		input: inApp("max_fails 1000", "unhealthy_status 500 502 503", "fail_duration 30s", "max_fail_duration 1d",
			"max_ejected_percent 100", "panic_threshold 50", "retries 10", "try_duration 2.5s", "retry_budget_percent 100",
			"slow_start 1m30s", "instances 127.0.0.1:1"),
		want: `{"apps":[{"host":"a.example.com","max_fails":1000,"unhealthy_status":["500","502","503"],"fail_duration":"30s",
			"max_fail_duration":"24h0m0s","max_ejected_percent":100,"panic_threshold":50,"retries":10,"try_duration":"2.5s",
			"retry_budget_percent":100,"slow_start":"1m30s","instances":[{"url":"127.0.0.1:1"}]}]}`,
	},
	{
		name:  "status classes in either case, kept as written",
		input: inApp("unhealthy_status 5xx 429", "health_uri /", "health_status 2XX", "instances 127.0.0.1:1"),
		want:  `{"apps":[{"host":"a.example.com","unhealthy_status":["5xx","429"],"health_uri":"/","health_status":["2XX"],"instances":[{"url":"127.0.0.1:1"}]}]}`,
	},
	{
		name:  "shorthand: health_headers block among options",
		input: "load_balancer 127.0.0.1:1 {\n\thealth_uri /h\n\thealth_headers {\n\t\tHost example.com\n\t}\n\tretries 1\n}",
		want:  `{"apps":[{"health_uri":"/h","health_headers":{"Host":["example.com"]},"retries":1,"instances":[{"url":"127.0.0.1:1"}]}]}`,
	},

	// Errors in health check, passive check and retry options.
	{
		name:    "health_method without argument",
		input:   inApp("health_method"),
		wantErr: []string{`app "a.example.com": health_method: want 1 argument, got none`},
		line:    3,
	},
	{
		name:    "health_method not a token",
		input:   inApp(`health_method "GE T"`),
		wantErr: []string{`app "a.example.com": health_method: invalid method "GE T"`},
		line:    3,
		is:      caddylb.ErrInvalidMethod,
	},
	{
		name:    "health_method empty",
		input:   inApp(`health_method ""`),
		wantErr: []string{`app "a.example.com": health_method: want a value, got an empty one; leave the option out for its default`},
		line:    3,
	},
	{
		name:    "health_port zero",
		input:   inApp("health_uri /h", "health_port 0"),
		wantErr: []string{`app "a.example.com": health_port: invalid port: want 1 to 65535, got 0`},
		line:    4,
		is:      caddylb.ErrInvalidPort,
	},
	{
		name:    "health_port too large",
		input:   inApp("health_port 65536"),
		wantErr: []string{`app "a.example.com": health_port: invalid port: want 1 to 65535, got 65536`},
		line:    3,
		is:      caddylb.ErrInvalidPort,
	},
	{
		name:    "health_port not a number",
		input:   inApp("health_port http"),
		wantErr: []string{`app "a.example.com": health_port: want an integer, got "http"`},
		line:    3,
	},
	{
		name:    "health_body that does not compile",
		input:   inApp("health_body ok(", "health_uri /h"),
		wantErr: []string{`app "a.example.com": health_body: invalid regular expression: error parsing regexp: missing closing )`},
		line:    3,
		is:      caddylb.ErrInvalidRegexp,
	},
	{
		name:    "health_body empty",
		input:   inApp(`health_body ""`),
		wantErr: []string{`app "a.example.com": health_body: want a value, got an empty one; leave the option out for its default`},
		line:    3,
	},
	{
		name:    "health_passes zero",
		input:   inApp("health_passes 0"),
		wantErr: []string{`app "a.example.com": health_passes: invalid count: want an integer from 1 to 1000, got 0`},
		line:    3,
	},
	{
		name:    "health_passes too large",
		input:   inApp("health_passes 1001"),
		wantErr: []string{`app "a.example.com": health_passes: invalid count: want an integer from 1 to 1000, got 1001`},
		line:    3,
	},
	{
		name:    "health_fails negative",
		input:   inApp("health_uri /h", "health_fails -1"),
		wantErr: []string{`app "a.example.com": health_fails: invalid count: want an integer from 1 to 1000, got -1`},
		line:    4,
	},
	{
		name:    "health_fails not a number",
		input:   inApp("health_fails two"),
		wantErr: []string{`app "a.example.com": health_fails: want an integer, got "two"`},
		line:    3,
	},
	{
		name:    "health_status without argument",
		input:   inApp("health_status"),
		wantErr: []string{`app "a.example.com": health_status: want one or more statuses (codes such as 503, or classes such as 5xx), got none`},
		line:    3,
	},
	{
		name:    "health_status out of range",
		input:   inApp("health_status 200 600"),
		wantErr: []string{`app "a.example.com": health_status: invalid status "600": want a code from 100 to 599 or a class such as 5xx`},
		line:    3,
		is:      caddylb.ErrInvalidStatus,
	},
	{
		name:    "health_status of an unknown class",
		input:   inApp("health_status 6xx"),
		wantErr: []string{`app "a.example.com": health_status: invalid status "6xx"`},
		line:    3,
		is:      caddylb.ErrInvalidStatus,
	},
	{
		name:    "unhealthy_status without argument",
		input:   inApp("instances 127.0.0.1:1", "unhealthy_status"),
		wantErr: []string{`app "a.example.com": unhealthy_status: want one or more statuses`},
		line:    4,
	},
	{
		name:    "unhealthy_status with a bad code",
		input:   inApp("unhealthy_status 5xx 50"),
		wantErr: []string{`app "a.example.com": unhealthy_status: invalid status "50"`},
		line:    3,
		is:      caddylb.ErrInvalidStatus,
	},
	{
		name:    "initially_unhealthy with an argument",
		input:   inApp("health_uri /h", "initially_unhealthy true"),
		wantErr: []string{`app "a.example.com": initially_unhealthy: want no arguments, got 1: ["true"]`},
		line:    4,
	},
	{
		name:    "initially_unhealthy with a block",
		input:   inApp("initially_unhealthy {", "x", "}"),
		wantErr: []string{`app "a.example.com": initially_unhealthy: unexpected block`},
		line:    3,
	},
	{
		name:    "health_headers with arguments",
		input:   inApp("health_headers Host example.com"),
		wantErr: []string{`app "a.example.com": health_headers: want a block of header lines, not arguments (got 2: ["Host" "example.com"])`},
		line:    3,
	},
	{
		name:    "health_headers without a block",
		input:   inApp("health_uri /h", "health_headers", "instances 127.0.0.1:1"),
		wantErr: []string{`app "a.example.com": health_headers: want a block with a line per header: <name> <values...>`},
		line:    4,
	},
	{
		name:    "health_headers with an empty block",
		input:   inApp("health_uri /h", "health_headers {", "}", "instances 127.0.0.1:1"),
		wantErr: []string{`app "a.example.com": health_headers: want a block with a line per header`},
		line:    4,
	},
	{
		name:    "health_headers line without a value",
		input:   inApp("health_headers {", "X-Probe 1", "X-Empty", "}"),
		wantErr: []string{`app "a.example.com": health_headers: X-Empty: want one or more values`},
		line:    5,
	},
	{
		name:    "health_headers with a bad name",
		input:   inApp("health_headers {", `"X Probe" 1`, "}"),
		wantErr: []string{`app "a.example.com": health_headers: invalid header: bad name "X Probe"`},
		line:    3,
		is:      caddylb.ErrInvalidHeader,
	},
	{
		name:    "health_headers with a bad value",
		input:   inApp("health_headers {", "X-Probe ok \"a\x01b\"", "}"),
		wantErr: []string{"app \"a.example.com\": health_headers: invalid header: bad value \"a\\x01b\" for X-Probe"},
		line:    3,
		is:      caddylb.ErrInvalidHeader,
	},
	{
		name:    "health_headers with a block in a line",
		input:   inApp("health_headers {", "X-Probe 1 {", "2", "}", "}"),
		wantErr: []string{`app "a.example.com": health_headers: X-Probe: unexpected block: a header line takes values only`},
		line:    4,
	},
	{
		name:    "max_fails negative",
		input:   inApp("max_fails -1"),
		wantErr: []string{`app "a.example.com": max_fails: invalid count: want an integer from 0 to 1000, got -1`},
		line:    3,
	},
	{
		name:    "max_fails not an integer",
		input:   inApp("instances 127.0.0.1:1", "max_fails 2.5"),
		wantErr: []string{`app "a.example.com": max_fails: want an integer, got "2.5"`},
		line:    4,
	},
	{
		name:    "max_fails two arguments",
		input:   inApp("max_fails 1 2"),
		wantErr: []string{`app "a.example.com": max_fails: want 1 argument, got 2: ["1" "2"]`},
		line:    3,
	},
	{
		name:    "retries above the maximum",
		input:   inApp("retries 11"),
		wantErr: []string{`app "a.example.com": retries: invalid count: want an integer from 0 to 10, got 11`},
		line:    3,
	},
	{
		name:    "retries without argument",
		input:   inApp("retries"),
		wantErr: []string{`app "a.example.com": retries: want 1 argument, got none`},
		line:    3,
	},
	{
		name:    "fail_duration zero",
		input:   inApp("fail_duration 0s"),
		wantErr: []string{`app "a.example.com": fail_duration: duration must be positive, got 0s`},
		line:    3,
		is:      caddylb.ErrInvalidDuration,
	},
	{
		name:    "fail_duration not a duration",
		input:   inApp("fail_duration long"),
		wantErr: []string{`app "a.example.com": fail_duration: bad duration value "long"`},
		line:    3,
	},
	{
		name:    "max_fail_duration negative",
		input:   inApp("max_fail_duration -1m"),
		wantErr: []string{`app "a.example.com": max_fail_duration: duration must be positive, got -1m0s`},
		line:    3,
		is:      caddylb.ErrInvalidDuration,
	},
	{
		name:    "max_ejected_percent above 100",
		input:   inApp("max_ejected_percent 101"),
		wantErr: []string{`app "a.example.com": max_ejected_percent: invalid percentage: want 0 to 100, got 101`},
		line:    3,
		is:      caddylb.ErrInvalidPercent,
	},
	{
		name:    "max_ejected_percent with a percent sign",
		input:   inApp("max_ejected_percent 50%"),
		wantErr: []string{`app "a.example.com": max_ejected_percent: want an integer, got "50%"`},
		line:    3,
	},
	{
		name:    "panic_threshold negative",
		input:   inApp("panic_threshold -1"),
		wantErr: []string{`app "a.example.com": panic_threshold: invalid percentage: want 0 to 100, got -1`},
		line:    3,
		is:      caddylb.ErrInvalidPercent,
	},
	{
		name:    "retry_budget_percent above 100",
		input:   inApp("instances 127.0.0.1:1", "retry_budget_percent 200"),
		wantErr: []string{`app "a.example.com": retry_budget_percent: invalid percentage: want 0 to 100, got 200`},
		line:    4,
		is:      caddylb.ErrInvalidPercent,
	},
	{
		name:    "try_duration negative",
		input:   inApp("try_duration -1s"),
		wantErr: []string{`app "a.example.com": try_duration: duration must not be negative, got -1s`},
		line:    3,
		is:      caddylb.ErrNegativeDuration,
	},
	{
		name:    "try_duration not a duration",
		input:   inApp("try_duration 5"),
		wantErr: []string{`app "a.example.com": try_duration: bad duration value "5": time: missing unit`},
		line:    3,
	},
	{
		name:    "slow_start negative",
		input:   inApp("slow_start -5m"),
		wantErr: []string{`app "a.example.com": slow_start: duration must not be negative, got -5m0s`},
		line:    3,
		is:      caddylb.ErrNegativeDuration,
	},
	{
		name:    "slow_start with a block",
		input:   inApp("slow_start 1m {", "x", "}"),
		wantErr: []string{`app "a.example.com": slow_start: unexpected block: only a header option takes one`},
		line:    3,
	},
	{
		name:    "health option without health_uri points at the first one Provision checks",
		input:   inApp("health_fails 2", "instances 127.0.0.1:1", "health_method HEAD"),
		wantErr: []string{`app "a.example.com": health_method: option does not apply: it configures active health checks, which need health_uri or health_grpc`},
		line:    5,
		is:      caddylb.ErrInapplicableOption,
	},
	{
		name:    "shorthand: health_headers without health_uri",
		input:   "load_balancer 127.0.0.1:1 {\n\tretries 1\n\thealth_headers {\n\t\tHost example.com\n\t}\n}",
		wantErr: []string{`app "*": health_headers: option does not apply: it configures active health checks, which need health_uri or health_grpc`},
		line:    3,
		is:      caddylb.ErrInapplicableOption,
	},
	{
		name:    "health option in an app without health_uri, another app has one",
		input:   "load_balancer {\n\tapp a {\n\t\thealth_uri /h\n\t\tinstances 127.0.0.1:1\n\t}\n\tapp b {\n\t\tinstances 127.0.0.1:1\n\t\tinitially_unhealthy\n\t}\n}",
		wantErr: []string{`app "b": initially_unhealthy: option does not apply`},
		line:    8,
		is:      caddylb.ErrInapplicableOption,
	},

	// Nothing to balance over: Provision would refuse it, this says where.
	{
		name:    "no apps",
		input:   "load_balancer",
		wantErr: []string{"load_balancer: no apps configured"},
		line:    1,
		is:      caddylb.ErrNoApps,
	},
	{
		name:    "no apps, empty block",
		input:   "load_balancer {\n}",
		wantErr: []string{"load_balancer: no apps configured"},
		line:    1,
		is:      caddylb.ErrNoApps,
	},
	{
		name:    "app without instances",
		input:   "load_balancer {\n\tapp a.example.com {\n\t\tinstances 127.0.0.1:1\n\t}\n\tapp b.example.com {\n\t\tstrategy round_robin\n\t}\n}",
		wantErr: []string{`app "b.example.com": instances: no instances`},
		line:    5,
		is:      caddylb.ErrNoInstances,
	},
	{
		name:    "app with an empty block",
		input:   "load_balancer {\n\tapp a.example.com {\n\t}\n}",
		wantErr: []string{`app "a.example.com": instances: no instances`},
		line:    2,
		is:      caddylb.ErrNoInstances,
	},
	{
		name:    "app without a block",
		input:   "load_balancer {\n\tapp a.example.com\n}",
		wantErr: []string{`app "a.example.com": instances: no instances`},
		line:    2,
		is:      caddylb.ErrNoInstances,
	},
	{
		name:    "shorthand: options but no instances",
		input:   "load_balancer {\n\tstrategy round_robin\n}",
		wantErr: []string{`app "*": instances: no instances: give them as arguments of load_balancer or on an instances line`},
		line:    1,
		is:      caddylb.ErrNoInstances,
	},
}

// onceOptions are good lines of each option that configures health
// checks, passive checks or retries, which may be given once per app, and
// whether it configures active health checks (so needs health_uri).
var onceOptions = []struct {
	lines  []string
	active bool
}{
	{[]string{"health_method HEAD"}, true},
	{[]string{"health_headers {", "Host example.com", "}"}, true},
	{[]string{"health_port 8080"}, true},
	{[]string{"health_status 200"}, true},
	{[]string{"health_body ok"}, true},
	{[]string{"health_passes 2"}, true},
	{[]string{"health_fails 2"}, true},
	{[]string{"initially_unhealthy"}, true},
	{[]string{"max_fails 3"}, false},
	{[]string{"unhealthy_status 5xx"}, false},
	{[]string{"fail_duration 1s"}, false},
	{[]string{"max_fail_duration 1m"}, false},
	{[]string{"max_ejected_percent 30"}, false},
	{[]string{"panic_threshold 30"}, false},
	{[]string{"retries 1"}, false},
	{[]string{"try_duration 1s"}, false},
	{[]string{"retry_budget_percent 30"}, false},
	{[]string{"slow_start 1s"}, false},
}

// Each of onceOptions given twice is refused at the second; each that
// configures active health checks is refused, at its line, in an app
// without health_uri.
func init() {
	for _, o := range onceOptions {
		name := strings.Fields(o.lines[0])[0]
		unmarshalCases = append(unmarshalCases, unmarshalCase{
			name:    name + " twice",
			input:   inApp(slices.Concat([]string{"health_uri /h"}, o.lines, o.lines)...),
			wantErr: []string{fmt.Sprintf(`app "a.example.com": %s already specified`, name)},
			line:    4 + len(o.lines),
		})
		if o.active {
			unmarshalCases = append(unmarshalCases, unmarshalCase{
				name:  name + " without health_uri",
				input: inApp(slices.Concat([]string{"instances 127.0.0.1:1"}, o.lines, []string{"retries 1"})...),
				wantErr: []string{fmt.Sprintf(`app "a.example.com": %s: option does not apply: it configures active health checks, which need health_uri or health_grpc`,
					name)},
				line: 4,
				is:   caddylb.ErrInapplicableOption,
			})
		}
	}
}

func TestUnmarshalCaddyfile(t *testing.T) {
	for _, tc := range unmarshalCases {
		t.Run(tc.name, func(t *testing.T) {
			var h caddylb.Handler
			err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))

			if tc.wantErr != nil {
				if err == nil {
					t.Fatalf("no error; want one containing %q; got handler %s", tc.wantErr, jsonOf(t, &h))
				}
				t.Logf("error: %v", err)
				for _, want := range tc.wantErr {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error %q does not contain %q", err, want)
					}
				}
				if at := fmt.Sprintf(", at Testfile:%d", tc.line); !strings.HasSuffix(err.Error(), at) {
					t.Errorf("error %q does not end with %q", err, at)
				}
				if tc.is != nil && !errors.Is(err, tc.is) {
					t.Errorf("error %q does not wrap %q", err, tc.is)
				}
				return
			}

			if err != nil {
				t.Fatalf("error: %v", err)
			}
			got := jsonOf(t, &h)
			if want := tidyJSON(t, []byte(tc.want)); got != want {
				t.Errorf("handler:\n%s\nwant:\n%s", got, want)
			}

			// What the Caddyfile gives must survive the trip through JSON
			// that Caddy makes it take, and be a config Provision accepts.
			var reloaded caddylb.Handler
			if err := json.Unmarshal([]byte(got), &reloaded); err != nil {
				t.Fatalf("unmarshal the handler's JSON: %v", err)
			}
			if again := jsonOf(t, &reloaded); again != got {
				t.Errorf("JSON round trip changed the handler:\n%s\nwant:\n%s", again, got)
			}
			// Health checks start only once Caddy runs the config, which
			// it never does here: they do not probe the instances.
			ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
			defer cancel()
			if err := reloaded.Provision(ctx); err != nil {
				t.Errorf("Provision refuses what the Caddyfile gave: %v", err)
			}
			cancel()
			if err := reloaded.Cleanup(); err != nil {
				t.Errorf("Cleanup: %v", err)
			}
		})
	}
}

// TestCaddyfileHasEveryAppOption checks that every option of App (by its
// JSON name) is an option of an app in the Caddyfile, and is listed in the
// error for an unknown one; dynamic_upstreams is the dynamic line's, tls
// the tls_* lines'.
func TestCaddyfileHasEveryAppOption(t *testing.T) {
	var h caddylb.Handler
	err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(inApp("no_such_option")))
	if err == nil {
		t.Fatal("an unknown option is accepted")
	}
	_, list, _ := strings.Cut(err.Error(), "(want one of ")
	list, _, _ = strings.Cut(list, ")")
	listed := strings.Split(list, ", ")
	for _, f := range reflect.VisibleFields(reflect.TypeFor[caddylb.App]()) {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if !f.IsExported() || name == "" || name == "-" || name == "host" || name == "name" {
			continue
		}
		if name == "dynamic_upstreams" {
			name = "dynamic"
		}
		if name == "tls" {
			name = "tls_insecure_skip_verify"
		}
		if !slices.Contains(listed, name) {
			t.Errorf("%s is not listed in %q", name, err)
		}
		var h caddylb.Handler
		if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(inApp(name))); err != nil && strings.Contains(err.Error(), "unrecognized") {
			t.Errorf("%s is not an option: %v", name, err)
		}
	}
}

// FuzzUnmarshalCaddyfile checks that no input makes UnmarshalCaddyfile
// panic, that every error it returns points at a line, and that whatever it
// accepts is a handler with apps and instances that survives JSON.
func FuzzUnmarshalCaddyfile(f *testing.F) {
	for _, tc := range unmarshalCases {
		f.Add(tc.input)
	}
	f.Fuzz(func(t *testing.T, input string) {
		// Not NewTestDispenser: it exits the process on a lexer error.
		tokens, err := caddyfile.Tokenize([]byte(input), "Fuzzfile")
		if err != nil || len(tokens) == 0 {
			return
		}
		var h caddylb.Handler
		err = h.UnmarshalCaddyfile(caddyfile.NewDispenser(tokens))
		if err != nil {
			msg := err.Error()
			if !strings.Contains(msg, ", at Fuzzfile:") {
				t.Fatalf("error without file:line: %v", err)
			}
			if !strings.HasPrefix(msg, "app ") && !strings.HasPrefix(msg, "app: ") && !strings.HasPrefix(msg, "load_balancer: ") {
				t.Fatalf("error names neither an app nor load_balancer: %v", err)
			}
			return
		}
		if len(h.Apps) == 0 {
			t.Fatal("no error, but no apps")
		}
		for _, app := range h.Apps {
			if len(app.Instances) == 0 {
				t.Fatalf("no error, but app %q has no instances", app.Host)
			}
		}
		got := jsonOf(t, &h)
		var reloaded caddylb.Handler
		if err := json.Unmarshal([]byte(got), &reloaded); err != nil {
			t.Fatalf("unmarshal %s: %v", got, err)
		}
		if again := jsonOf(t, &reloaded); again != got {
			t.Fatalf("JSON round trip changed the handler:\n%s\nwant:\n%s", again, got)
		}
	})
}

// jsonOf returns v as indented JSON.
func jsonOf(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	return tidyJSON(t, b)
}

// tidyJSON indents b with tabs and sorts its object keys, so that two
// equal values compare equal as strings and differ readably.
func tidyJSON(t testing.TB, b []byte) string {
	t.Helper()
	var v any
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("invalid JSON: %v\n%s", err, b)
	}
	out, err := json.MarshalIndent(v, "", "\t")
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	return string(out)
}
