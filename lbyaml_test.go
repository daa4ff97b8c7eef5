package caddylb_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig"

	caddylb "github.com/golb/caddy-lb"
)

// lbyamlAdapt adapts a YAML config with the lbyaml adapter, as `caddy
// adapt --adapter lbyaml` does for a file named config.yaml, and fails the
// test on an error or a warning.
func lbyamlAdapt(t testing.TB, body string) []byte {
	t.Helper()
	out, warnings, err := caddyconfig.GetAdapter("lbyaml").Adapt([]byte(body), map[string]any{"filename": "config.yaml"})
	if err != nil {
		t.Fatalf("adapt: %v\n%s", err, body)
	}
	for _, w := range warnings {
		t.Errorf("warning: %s:%d: %s", w.File, w.Line, w.Message)
	}
	return out
}

// TestLBYAMLAdapt adapts each testdata/lbyaml/*.yaml and compares the result
// with the .json file of the same name. CADDYLB_UPDATE_GOLDEN=1 rewrites the
// .json files instead.
func TestLBYAMLAdapt(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "lbyaml", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no golden files")
	}
	update := os.Getenv(updateGoldenEnv) == "1"
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".yaml"), func(t *testing.T) {
			input, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			got := tidyJSON(t, lbyamlAdapt(t, string(input)))
			golden := strings.TrimSuffix(file, ".yaml") + ".json"
			if update {
				if err := os.WriteFile(golden, []byte(got+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if want := tidyJSON(t, want); got != want {
				t.Errorf("adapted JSON differs from %s (rerun with %s=1 to update):\n%s\nwant:\n%s", golden, updateGoldenEnv, got, want)
			}
		})
	}
}

// lbyamlErrorCases are configs the adapter refuses: the error must start
// with the position of the fault and contain each of want.
var lbyamlErrorCases = []struct {
	name  string
	input string
	pos   string // "config.yaml:line:col:", or "config.yaml:line:" for YAML syntax errors
	want  []string
	is    error
}{
	{
		name: "unknown top-level key",
		input: `apps:
  - host: a.test
    instances: [{url: http://127.0.0.1:1}]
server: x
`,
		pos:  "config.yaml:4:1:",
		want: []string{`unknown key "server" (want apps, listen or admin)`},
	},
	{
		name: "unknown app key",
		input: `apps:
  - host: a.test
    bogus: 5
    instances: [{url: http://127.0.0.1:1}]
`,
		pos:  "config.yaml:3:5:",
		want: []string{`app "a.test": unknown key "bogus" (want host, name, strategy, `, "instances"},
	},
	{
		name: "unknown instance key",
		input: `apps:
  - host: a.test
    instances:
      - url: http://127.0.0.1:1
      - url: http://127.0.0.1:2
        bogus: 2
`,
		pos:  "config.yaml:6:9:",
		want: []string{`app "a.test": instances[1]: unknown key "bogus" (want url`},
	},
	{
		name: "key in the wrong case",
		input: `apps:
  - host: a.test
    Timeout: 5s
    instances: [{url: http://127.0.0.1:1}]
`,
		pos:  "config.yaml:3:5:",
		want: []string{`app "a.test": unknown key "Timeout"`},
	},
	{
		name: "instances not a list",
		input: `apps:
  - host: a.test
    instances: "x"
`,
		pos:  "config.yaml:3:16:",
		want: []string{`app "a.test": instances: want a list, got the string "x"`},
	},
	{
		name: "host not a string",
		input: `apps:
  - host: [a, b]
    instances: [{url: http://127.0.0.1:1}]
`,
		pos:  "config.yaml:2:11:",
		want: []string{`apps[0]: host: want a string, got a list`},
	},
	{
		name: "url a number",
		input: `apps:
  - host: a.test
    instances:
      - url: 8080
`,
		pos:  "config.yaml:4:14:",
		want: []string{`app "a.test": instances[0].url: want a string, got the integer 8080`},
	},
	{
		name: "bad duration",
		input: `apps:
  - host: a.test
    timeout: soon
    instances: [{url: http://127.0.0.1:1}]
`,
		pos:  "config.yaml:3:14:",
		want: []string{`app "a.test": timeout: bad duration value "soon"`},
	},
	{
		name: "fractional nanoseconds",
		input: `apps:
  - host: a.test
    health_check_cooldown: 1.5
    instances: [{url: http://127.0.0.1:1}]
`,
		pos:  "config.yaml:3:28:",
		want: []string{`app "a.test": health_check_cooldown: want a duration such as "10s", "1m30s" or "1d", got the number 1.5`},
	},
	{
		name: "zero duration",
		input: `apps:
  - host: a.test
    instances: [{url: http://127.0.0.1:1}]
    health_check_cooldown: 0s
`,
		pos:  "config.yaml:4:28:",
		want: []string{`app "a.test": health_check_cooldown: duration must be positive, got 0s`},
		is:   caddylb.ErrInvalidDuration,
	},
	{
		name: "negative duration",
		input: `apps:
  - instances: [{url: http://127.0.0.1:1}]
    timeout: -1s
`,
		pos:  "config.yaml:3:14:",
		want: []string{`app "*": timeout: duration must be positive, got -1s`},
		is:   caddylb.ErrInvalidDuration,
	},
	{
		name: "health_headers not a mapping",
		input: `apps:
  - host: a.test
    health_uri: /h
    health_headers: [Host]
    instances: [{url: http://127.0.0.1:1}]
`,
		pos:  "config.yaml:4:21:",
		want: []string{`app "a.test": health_headers: want a mapping, got a list`},
	},
	{
		name: "health_headers value a mapping",
		input: `apps:
  - host: a.test
    health_uri: /h
    health_headers:
      X-Probe: {a: b}
    instances: [{url: http://127.0.0.1:1}]
`,
		pos:  "config.yaml:5:16:",
		want: []string{`app "a.test": health_headers.X-Probe: want a value or a list of values, got a mapping`},
	},
	{
		name: "health_headers value in a list a list",
		input: `apps:
  - host: a.test
    health_uri: /h
    health_headers:
      X-Probe: [a, [b]]
    instances: [{url: http://127.0.0.1:1}]
`,
		pos:  "config.yaml:5:20:",
		want: []string{`app "a.test": health_headers.X-Probe[1]: want a value, got a list`},
	},
	{
		name: "health_headers value empty",
		input: `apps:
  - host: a.test
    health_uri: /h
    health_headers:
      X-Probe:
    instances: [{url: http://127.0.0.1:1}]
`,
		pos:  "config.yaml:5:15:",
		want: []string{`app "a.test": health_headers.X-Probe: want a value or a list of values, got nothing`},
	},
	{
		name: "health_headers with a bad name",
		input: `apps:
  - host: a.test
    health_uri: /h
    health_headers:
      "X Probe": 1
    instances: [{url: http://127.0.0.1:1}]
`,
		pos:  "config.yaml:5:7:",
		want: []string{`app "a.test": health_headers: invalid header: bad name "X Probe"`},
		is:   caddylb.ErrInvalidHeader,
	},
	{
		name: "health_headers without health_uri",
		input: `apps:
  - host: a.test
    health_headers: {Host: example.com}
    instances: [{url: http://127.0.0.1:1}]
`,
		pos:  "config.yaml:3:21:",
		want: []string{`app "a.test": health_headers: option does not apply: it configures active health checks, which need health_uri or health_grpc`},
		is:   caddylb.ErrInapplicableOption,
	},
	{
		name: "health_method not a token",
		input: `apps:
  - host: a.test
    health_uri: /h
    health_method: GE T
    instances: [{url: http://127.0.0.1:1}]
`,
		pos:  "config.yaml:4:20:",
		want: []string{`app "a.test": health_method: invalid method "GE T"`},
		is:   caddylb.ErrInvalidMethod,
	},
	{
		name: "health_port a string",
		input: `apps:
  - host: a.test
    health_uri: /h
    health_port: "80"
    instances: [{url: http://127.0.0.1:1}]
`,
		pos:  "config.yaml:4:18:",
		want: []string{`app "a.test": health_port: want an integer, got the string "80"`},
	},
	{
		name: "health_port too large",
		input: `apps:
  - host: a.test
    health_uri: /h
    health_port: 70000
    instances: [{url: http://127.0.0.1:1}]
`,
		pos:  "config.yaml:4:18:",
		want: []string{`app "a.test": health_port: invalid port: want 1 to 65535, got 70000`},
		is:   caddylb.ErrInvalidPort,
	},
	{
		name: "health_status out of range",
		input: `apps:
  - host: a.test
    health_uri: /h
    health_status: [200, 600]
    instances: [{url: http://127.0.0.1:1}]
`,
		pos:  "config.yaml:4:20:",
		want: []string{`app "a.test": health_status: invalid status "600"`},
		is:   caddylb.ErrInvalidStatus,
	},
	{
		name: "health_status element a list",
		input: `apps:
  - host: a.test
    health_uri: /h
    health_status: [[200]]
    instances: [{url: http://127.0.0.1:1}]
`,
		pos:  "config.yaml:4:21:",
		want: []string{`app "a.test": health_status[0]: want a value, got a list`},
	},
	{
		name: "unhealthy_status not a list",
		input: `apps:
  - host: a.test
    unhealthy_status: 5xx
    instances: [{url: http://127.0.0.1:1}]
`,
		pos:  "config.yaml:3:23:",
		want: []string{`app "a.test": unhealthy_status: want a list, got the string "5xx"`},
	},
	{
		name: "health_body that does not compile",
		input: `apps:
  - host: a.test
    health_uri: /h
    health_body: "ok("
    instances: [{url: http://127.0.0.1:1}]
`,
		pos:  "config.yaml:4:18:",
		want: []string{`app "a.test": health_body: invalid regular expression`},
		is:   caddylb.ErrInvalidRegexp,
	},
	{
		name: "health_passes too large",
		input: `apps:
  - host: a.test
    health_uri: /h
    health_passes: 1001
    instances: [{url: http://127.0.0.1:1}]
`,
		pos:  "config.yaml:4:20:",
		want: []string{`app "a.test": health_passes: invalid count: want an integer from 1 to 1000, got 1001`},
		is:   caddylb.ErrInvalidCount,
	},
	{
		name: "initially_unhealthy not a bool",
		input: `apps:
  - host: a.test
    health_uri: /h
    initially_unhealthy: yes
    instances: [{url: http://127.0.0.1:1}]
`,
		pos:  "config.yaml:4:26:",
		want: []string{`app "a.test": initially_unhealthy: want true or false, got the string "yes"`},
	},
	{
		name: "initially_unhealthy without health_uri",
		input: `apps:
  - host: a.test
    instances: [{url: http://127.0.0.1:1}]
    initially_unhealthy: true
`,
		pos:  "config.yaml:4:26:",
		want: []string{`app "a.test": initially_unhealthy: option does not apply`},
		is:   caddylb.ErrInapplicableOption,
	},
	{
		name: "max_fails negative",
		input: `apps:
  - host: a.test
    max_fails: -1
    instances: [{url: http://127.0.0.1:1}]
`,
		pos:  "config.yaml:3:16:",
		want: []string{`app "a.test": max_fails: invalid count: want an integer from 0 to 1000, got -1`},
		is:   caddylb.ErrInvalidCount,
	},
	{
		name: "retries above the maximum",
		input: `apps:
  - host: a.test
    instances: [{url: http://127.0.0.1:1}]
    retries: 11
`,
		pos:  "config.yaml:4:14:",
		want: []string{`app "a.test": retries: invalid count: want an integer from 0 to 10, got 11`},
		is:   caddylb.ErrInvalidCount,
	},
	{
		name: "fail_duration zero",
		input: `apps:
  - host: a.test
    fail_duration: 0s
    instances: [{url: http://127.0.0.1:1}]
`,
		pos:  "config.yaml:3:20:",
		want: []string{`app "a.test": fail_duration: duration must be positive, got 0s`},
		is:   caddylb.ErrInvalidDuration,
	},
	{
		name: "max_fail_duration not a duration",
		input: `apps:
  - host: a.test
    max_fail_duration: forever
    instances: [{url: http://127.0.0.1:1}]
`,
		pos:  "config.yaml:3:24:",
		want: []string{`app "a.test": max_fail_duration: bad duration value "forever"`},
	},
	{
		name: "max_ejected_percent above 100",
		input: `apps:
  - host: a.test
    max_ejected_percent: 101
    instances: [{url: http://127.0.0.1:1}]
`,
		pos:  "config.yaml:3:26:",
		want: []string{`app "a.test": max_ejected_percent: invalid percentage: want 0 to 100, got 101`},
		is:   caddylb.ErrInvalidPercent,
	},
	{
		name: "panic_threshold with a percent sign",
		input: `apps:
  - host: a.test
    panic_threshold: 50%
    instances: [{url: http://127.0.0.1:1}]
`,
		pos:  "config.yaml:3:22:",
		want: []string{`app "a.test": panic_threshold: want an integer, got the string "50%"`},
	},
	{
		name: "retry_budget_percent negative",
		input: `apps:
  - host: a.test
    retry_budget_percent: -5
    instances: [{url: http://127.0.0.1:1}]
`,
		pos:  "config.yaml:3:27:",
		want: []string{`app "a.test": retry_budget_percent: invalid percentage: want 0 to 100, got -5`},
		is:   caddylb.ErrInvalidPercent,
	},
	{
		name: "try_duration negative",
		input: `apps:
  - host: a.test
    try_duration: -1s
    instances: [{url: http://127.0.0.1:1}]
`,
		pos:  "config.yaml:3:19:",
		want: []string{`app "a.test": try_duration: duration must not be negative, got -1s`},
		is:   caddylb.ErrNegativeDuration,
	},
	{
		name: "slow_start a list",
		input: `apps:
  - host: a.test
    slow_start: [1m]
    instances: [{url: http://127.0.0.1:1}]
`,
		pos:  "config.yaml:3:17:",
		want: []string{`app "a.test": slow_start: want a duration such as "10s", "1m30s" or "1d", got a list`},
	},
	{
		name: "bad scheme",
		input: `apps:
  - host: a.test
    instances:
      - url: http://127.0.0.1:1
      - url: ftp://127.0.0.1:21
`,
		pos:  "config.yaml:5:14:",
		want: []string{`app "a.test": instances[1].url: scheme must be http, https or h2c, got "ftp"`},
		is:   caddylb.ErrInvalidScheme,
	},
	{
		name: "negative priority",
		input: `apps:
  - host: shop.example.com
    instances:
      - url: http://127.0.0.1:1
      - url: http://127.0.0.1:2
      - url: http://127.0.0.1:3
        priority: -1
`,
		pos:  "config.yaml:7:19:",
		want: []string{`app "shop.example.com": instances[2].priority: invalid priority: want an integer from 0 to 65535, got -1`},
		is:   caddylb.ErrInvalidPriority,
	},
	{
		name: "failover_threshold out of range",
		input: `apps:
  - host: a.test
    failover_threshold: 0
    instances:
      - url: http://127.0.0.1:1
`,
		pos:  "config.yaml:3:25:",
		want: []string{`app "a.test": failover_threshold: invalid percentage: want 1 to 100, got 0`},
		is:   caddylb.ErrInvalidPercent,
	},
	{
		name: "hash_balance not above 1",
		input: `apps:
  - host: a.test
    strategy: hash
    hash_balance: 0.9
    instances:
      - url: http://127.0.0.1:1
`,
		pos:  "config.yaml:4:19:",
		want: []string{`app "a.test": hash_balance: invalid option: want more than 1.0, got 0.9`},
		is:   caddylb.ErrInvalidOption,
	},
	{
		name: "instance without url",
		input: `apps:
  - host: a.test
    instances:
      - {}
`,
		pos:  "config.yaml:4:9:",
		want: []string{`app "a.test": instances[0].url: URL has no host`},
		is:   caddylb.ErrMissingHost,
	},
	{
		name: "null instance",
		input: `apps:
  - host: a.test
    instances:
      -
`,
		pos:  "config.yaml:4:8:",
		want: []string{`app "a.test": instances[0].url: invalid URL`},
		is:   caddylb.ErrInvalidURL,
	},
	{
		name: "unknown strategy",
		input: `apps:
  - host: a.test
    strategy: fastest
    instances: [{url: http://127.0.0.1:1}]
`,
		pos:  "config.yaml:3:15:",
		want: []string{`app "a.test": strategy: unknown strategy "fastest"`},
		is:   caddylb.ErrUnknownStrategy,
	},
	{
		name: "health_uri not a path",
		input: `apps:
  - host: a.test
    health_uri: health
    instances: [{url: http://127.0.0.1:1}]
`,
		pos:  "config.yaml:3:17:",
		want: []string{`app "a.test": health_uri: health_uri must be a path`},
		is:   caddylb.ErrInvalidHealthURI,
	},
	{
		name: "host with a port",
		input: `apps:
  - host: a.test:8080
    instances: [{url: http://127.0.0.1:1}]
`,
		pos:  "config.yaml:2:11:",
		want: []string{`app "a.test:8080": host: invalid host`},
		is:   caddylb.ErrInvalidHost,
	},
	{
		name: "duplicate hosts",
		input: `apps:
  - host: a.test
    instances: [{url: http://127.0.0.1:1}]
  - host: A.test.
    instances: [{url: http://127.0.0.1:2}]
`,
		pos:  "config.yaml:4:11:",
		want: []string{`app "A.test.": host: duplicate app host: the app at line 2 already serves it`},
		is:   caddylb.ErrDuplicateHost,
	},
	{
		name: "two catch-alls",
		input: `apps:
  - instances: [{url: http://127.0.0.1:1}]
  - host: "*"
    instances: [{url: http://127.0.0.1:2}]
`,
		pos:  "config.yaml:3:11:",
		want: []string{`app "*": host: duplicate app host: the app at line 2 already serves it`},
		is:   caddylb.ErrDuplicateHost,
	},
	{
		name: "no instances",
		input: `apps:
  - host: a.test
    strategy: round_robin
`,
		pos:  "config.yaml:2:5:",
		want: []string{`app "a.test": instances: no instances`},
		is:   caddylb.ErrNoInstances,
	},
	{
		name: "empty instances",
		input: `apps:
  - host: a.test
    instances: []
`,
		pos:  "config.yaml:3:16:",
		want: []string{`app "a.test": instances: no instances`},
		is:   caddylb.ErrNoInstances,
	},
	{
		name:  "empty apps",
		input: "listen: :8080\napps: []\n",
		pos:   "config.yaml:2:7:",
		want:  []string{"apps: no apps configured"},
		is:    caddylb.ErrNoApps,
	},
	{
		name:  "no apps key",
		input: "listen: :8080\n",
		pos:   "config.yaml:1:1:",
		want:  []string{"apps: no apps configured"},
		is:    caddylb.ErrNoApps,
	},
	{
		name:  "apps not a list",
		input: "apps:\n  host: a.test\n",
		pos:   "config.yaml:2:3:",
		want:  []string{"apps: want a list of apps, got a mapping"},
	},
	{
		name:  "app not a mapping",
		input: "apps:\n  - a.test\n",
		pos:   "config.yaml:2:5:",
		want:  []string{`apps[0]: want a mapping with host and instances, got the string "a.test"`},
	},
	{
		name: "key given twice",
		input: `apps:
  - host: a.test
    timeout: 5s
    instances: [{url: http://127.0.0.1:1}]
    timeout: 6s
`,
		pos:  "config.yaml:5:5:",
		want: []string{`app "a.test": key "timeout" given twice (first at line 3)`},
	},
	{
		name: "listen not a string",
		input: `listen: 8080
apps: [{host: a.test, instances: [{url: http://127.0.0.1:1}]}]
`,
		pos:  "config.yaml:1:9:",
		want: []string{"listen: want a string, got the integer 8080"},
	},
	{
		name: "bad listen address",
		input: `listen: "127.0.0.1:80-70"
apps: [{host: a.test, instances: [{url: http://127.0.0.1:1}]}]
`,
		pos:  "config.yaml:1:9:",
		want: []string{"listen: ", "want an address such as :8080"},
	},
	{
		name: "listen without a port",
		input: `listen: "8080"
apps: [{host: a.test, instances: [{url: http://127.0.0.1:1}]}]
`,
		pos:  "config.yaml:1:9:",
		want: []string{`listen: no port in "8080" (want an address such as :8080 or 127.0.0.1:8080)`},
	},
	{
		name: "admin without a port",
		input: `admin: localhost
apps: [{host: a.test, instances: [{url: http://127.0.0.1:1}]}]
`,
		pos:  "config.yaml:1:8:",
		want: []string{`admin: no port in "localhost" (want an address such as localhost:2019, or off)`},
	},
	{
		name: "unknown admin option",
		input: `admin:
  listen: localhost:2019
  lissten: localhost:2020
apps: [{host: a.test, instances: [{url: http://127.0.0.1:1}]}]
`,
		pos:  "config.yaml:3:3:",
		want: []string{`admin: unknown key "lissten" (want disabled, listen,`},
	},
	{
		name: "bad admin option",
		input: `admin:
  config:
    persist: maybe
apps: [{host: a.test, instances: [{url: http://127.0.0.1:1}]}]
`,
		pos:  "config.yaml:3:14:",
		want: []string{`admin.config.persist: want true or false, got the string "maybe"`},
	},
	{
		name:  "not a mapping",
		input: "- host: a.test\n",
		pos:   "config.yaml:1:1:",
		want:  []string{"want a mapping with apps (and optionally listen and admin), got a list"},
	},
	{
		name: "invalid YAML",
		input: `apps:
  - host: a.test
   instances: x
`,
		pos:  "config.yaml:2:", // yaml.v3 gives the line where the list item starts
		want: []string{"invalid YAML: did not find expected '-' indicator"},
	},
	{
		name: "unclosed flow list",
		input: `apps:
  - host: a.test
    instances: [{url: http://127.0.0.1:1}
`,
		pos:  "config.yaml:3:", // where the list starts
		want: []string{"invalid YAML: did not find expected ',' or ']'"},
	},
	{
		name:  "empty file",
		input: "# nothing but a comment\n",
		pos:   "config.yaml:",
		want:  []string{"empty config"},
	},
	{
		name: "two documents",
		input: `apps: [{host: a.test, instances: [{url: http://127.0.0.1:1}]}]
---
apps: [{host: b.test, instances: [{url: http://127.0.0.1:1}]}]
`,
		pos:  "config.yaml:3:1:",
		want: []string{"a second YAML document"},
	},
	{
		name: "alias inside its own anchor",
		input: `apps:
  - host: a.test
    instances:
      - url: &u [*u]
`,
		pos:  "config.yaml:",
		want: []string{`app "a.test": `, "nested too deeply"},
	},
	{
		name:  "alias bomb",
		input: aliasBomb(8),
		pos:   "config.yaml:",
		want:  []string{`app "a.test": aliases expand the document too much`},
	},
	{
		name: "merge of a scalar",
		input: `apps:
  - <<: x
    host: a.test
    instances: [{url: http://127.0.0.1:1}]
`,
		pos:  "config.yaml:2:9:",
		want: []string{`app "a.test": <<: want a mapping or a list of mappings to merge, got the string "x"`},
	},
}

// aliasBomb returns a config whose one instance URL is a list that,
// aliases expanded, has 10^levels elements.
func aliasBomb(levels int) string {
	var b strings.Builder
	b.WriteString("apps:\n  - host: a.test\n    instances:\n      - url:\n")
	b.WriteString("        - &l0 [x, x, x, x, x, x, x, x, x, x]\n")
	for i := 1; i < levels; i++ {
		r := fmt.Sprintf("*l%d", i-1)
		fmt.Fprintf(&b, "        - &l%d [%s]\n", i, strings.Repeat(r+", ", 9)+r)
	}
	return b.String()
}

// TestLBYAMLAdaptErrors checks that every refused config is refused with
// the position of the fault, the app and the field.
func TestLBYAMLAdaptErrors(t *testing.T) {
	for _, tc := range lbyamlErrorCases {
		t.Run(tc.name, func(t *testing.T) {
			out, _, err := caddyconfig.GetAdapter("lbyaml").Adapt([]byte(tc.input), map[string]any{"filename": "config.yaml"})
			if err == nil {
				t.Fatalf("adapt succeeded; want an error\n%s", out)
			}
			msg := err.Error()
			t.Logf("error: %s", msg)
			if !strings.HasPrefix(msg, tc.pos) {
				t.Errorf("error does not start with %q", tc.pos)
			}
			for _, want := range tc.want {
				if !strings.Contains(msg, want) {
					t.Errorf("error does not contain %q", want)
				}
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error is not %v", tc.is)
			}
		})
	}

	t.Run("without a file name", func(t *testing.T) {
		_, _, err := caddyconfig.GetAdapter("lbyaml").Adapt([]byte("apps: []\n"), nil)
		if err == nil || !strings.HasPrefix(err.Error(), "lbyaml:1:7: apps: ") {
			t.Fatalf("error %v; want one at lbyaml:1:7", err)
		}
	})
}

// TestLBYAMLDurations checks the forms a duration takes: Caddy's strings, or
// an integer number of nanoseconds, which is almost never meant and so
// warned about.
func TestLBYAMLDurations(t *testing.T) {
	body := `apps:
  - host: a.test
    timeout: 10
    health_check_cooldown: 1d
    instances: [{url: http://127.0.0.1:1}]
  - host: b.test
    timeout: 2000000000 # deliberately nanoseconds: no warning
    instances: [{url: http://127.0.0.1:1}]
`
	out, warnings, err := caddyconfig.GetAdapter("lbyaml").Adapt([]byte(body), map[string]any{"filename": "config.yaml"})
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) != 1 || warnings[0].String() != `config.yaml:3 (app "a.test": timeout): 10 has no unit, so it is 10 nanoseconds; write 10s for seconds` {
		t.Errorf("warnings: %+v", warnings)
	}
	if !bytes.Contains(out, []byte(`"timeout":"10ns"`)) || !bytes.Contains(out, []byte(`"health_check_cooldown":"24h0m0s"`)) ||
		!bytes.Contains(out, []byte(`"timeout":"2s"`)) {
		t.Errorf("adapted: %s", out)
	}
}

// TestLBYAMLServesTraffic runs an adapted config in the Caddy of this
// process and balances real requests with it.
func TestLBYAMLServesTraffic(t *testing.T) {
	b1, b2, b3, pay := newBackend(t, "b1"), newBackend(t, "b2"), newBackend(t, "b3"), newBackend(t, "pay")
	b3.health.Store(http.StatusServiceUnavailable)
	s := newSite(t)
	cfg := lbyamlAdapt(t, fmt.Sprintf(`listen: 127.0.0.1:%d
admin:
  listen: %s
  config: {persist: false}
apps:
  - host: api.test
    health_uri: /health
    timeout: 5s
    health_check_cooldown: 1s
    strategy: round_robin
    instances:
      - url: %s
      - url: %s
      - url: %s
  - host: payments.test
    strategy: least_connections
    instances:
      - url: %s
`, s.port, adminAddr, b1.URL, b2.URL, b3.URL, pay.URL))
	if err := caddyLoad(cfg); err != nil {
		t.Fatalf("load: %v\n%s", err, cfg)
	}
	waitFor(t, "b3 to be found unhealthy", func() bool {
		rep := fetchReport(t)
		in := instanceOf(t, rep, "api.test", b3.URL)
		return !in.Healthy && in.LastError == "status 503" &&
			instanceOf(t, rep, "api.test", b1.URL).LastChecked != nil &&
			instanceOf(t, rep, "api.test", b2.URL).LastChecked != nil
	})

	seen := map[string]int{}
	for range 10 {
		status, body := s.get("api.test", "/hello")
		if status != http.StatusOK {
			t.Fatalf("api.test: %d %q", status, body)
		}
		seen[body]++
	}
	if want := map[string]int{"b1": 5, "b2": 5}; !reflect.DeepEqual(seen, want) {
		t.Errorf("api.test answers: %v, want %v", seen, want)
	}
	if status, body := s.get("payments.test", "/pay"); status != http.StatusOK || body != "pay" {
		t.Errorf("payments.test: %d %q", status, body)
	}
	if status, _ := s.get("other.test", "/"); status != http.StatusNotFound {
		t.Errorf("other.test: %d, want 404", status)
	}

	rep := fetchReport(t)
	if len(rep.Apps) != 2 || rep.Apps[0].Strategy != "round_robin" || rep.Apps[1].Strategy != "least_connections" {
		t.Fatalf("report: %+v", rep)
	}
	for url, want := range map[string]uint64{b1.URL: 5, b2.URL: 5, b3.URL: 0} {
		if in := instanceOf(t, rep, "api.test", url); in.TotalRequests != want || in.Healthy != (url != b3.URL) {
			t.Errorf("report of %s: %+v, want %d requests", url, in, want)
		}
	}
	if in := instanceOf(t, rep, "payments.test", pay.URL); in.TotalRequests != 1 {
		t.Errorf("report of %s: %+v, want 1 request", pay.URL, in)
	}
}

// lbyamlSite returns a YAML config on port whose app api.test has the given
// instance, with the admin endpoint at admin and no config persisted.
func lbyamlSite(port int, admin, instance string) string {
	return fmt.Sprintf(`listen: 127.0.0.1:%d
admin:
  listen: %s
  config:
    persist: false
apps:
  - host: api.test
    instances:
      - url: %s
`, port, admin, instance)
}

// TestLBYAMLAdminLoad posts YAML to the admin endpoint's /load with
// Content-Type text/lbyaml, which adapts it with no options.
func TestLBYAMLAdminLoad(t *testing.T) {
	b1, b2 := newBackend(t, "b1"), newBackend(t, "b2")
	s := newSite(t)
	if err := caddyLoad(lbyamlAdapt(t, lbyamlSite(s.port, adminAddr, b1.URL))); err != nil {
		t.Fatal(err)
	}
	if status, body := s.get("api.test", "/"); status != http.StatusOK || body != "b1" {
		t.Fatalf("before: %d %q", status, body)
	}

	post := func(body string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, "http://"+adminAddr+"/load", strings.NewReader(body))
		req.Header.Set("Content-Type", "text/lbyaml")
		resp, err := adminDo(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if status, body := post(lbyamlSite(s.port, adminAddr, b2.URL)); status != http.StatusOK {
		t.Fatalf("POST /load: %d %s", status, body)
	}
	if status, body := s.get("api.test", "/"); status != http.StatusOK || body != "b2" {
		t.Fatalf("after POST /load: %d %q", status, body)
	}

	bad := strings.Replace(lbyamlSite(s.port, adminAddr, b1.URL), "  - host: api.test\n", "  - host: api.test\n    strategy: fastest\n", 1)
	status, body := post(bad)
	if status != http.StatusBadRequest || !strings.Contains(unescape([]byte(body)), `lbyaml:8:15: app "api.test": strategy: unknown strategy "fastest"`) {
		t.Fatalf("POST /load of a bad config: %d %s", status, body)
	}
	if status, body := s.get("api.test", "/"); status != http.StatusOK || body != "b2" {
		t.Fatalf("after a refused POST /load: %d %q", status, body)
	}
}

// TestLBYAMLExample checks that examples/config.yaml adapts cleanly and,
// with its instances pointed at test backends, serves.
func TestLBYAMLExample(t *testing.T) {
	raw, err := os.ReadFile("examples/config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	lbyamlAdapt(t, string(raw))

	s := newSite(t)
	cfg := string(raw)
	backends := map[string]*backend{}
	for _, port := range []string{"9001", "9002", "9003"} {
		b := newBackend(t, port)
		backends[port] = b
		cfg = strings.ReplaceAll(cfg, "http://127.0.0.1:"+port, b.URL)
	}
	cfg += fmt.Sprintf("listen: 127.0.0.1:%d\nadmin: {listen: %q, config: {persist: false}}\n", s.port, adminAddr)
	if err := caddyLoad(lbyamlAdapt(t, cfg)); err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for range 4 {
		status, body := s.get("api.example.com", "/")
		if status != http.StatusOK {
			t.Fatalf("api.example.com: %d %q", status, body)
		}
		seen[body]++
	}
	if want := map[string]int{"9001": 2, "9002": 2}; !reflect.DeepEqual(seen, want) {
		t.Errorf("api.example.com answers: %v, want %v", seen, want)
	}
	if status, body := s.get("payments.example.com", "/"); status != http.StatusOK || body != "9003" {
		t.Errorf("payments.example.com: %d %q, want 9003", status, body)
	}
}

// TestLBYAMLCLI runs the caddy command with --adapter lbyaml: adapt,
// validate, run and reload.
func TestLBYAMLCLI(t *testing.T) {
	good := writeFile(t, "config.yaml", lbyamlSite(freePort(), "localhost:2019", "http://127.0.0.1:1"))
	bad := writeFile(t, "bad.yaml", `apps:
  - host: api.test
    instances:
      - url: gopher://127.0.0.1:1
`)

	t.Run("adapt", func(t *testing.T) {
		cmd := caddyCmd(t, "adapt", "--config", good, "--adapter", "lbyaml")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("caddy adapt: %v\n%s", err, stderr.String())
		}
		raw, _ := os.ReadFile(good)
		if got, want := tidyJSON(t, out), tidyJSON(t, lbyamlAdapt(t, string(raw))); got != want {
			t.Fatalf("caddy adapt printed:\n%s\nwant:\n%s", got, want)
		}
	})

	t.Run("validate", func(t *testing.T) {
		if out, err := caddyCmd(t, "validate", "--config", good, "--adapter", "lbyaml").CombinedOutput(); err != nil {
			t.Fatalf("caddy validate of a good config: %v\n%s", err, out)
		}
		for _, verb := range []string{"validate", "adapt"} {
			out, err := caddyCmd(t, verb, "--config", bad, "--adapter", "lbyaml").CombinedOutput()
			var exitErr *exec.ExitError
			if !errors.As(err, &exitErr) || exitErr.ExitCode() == 0 {
				t.Fatalf("caddy %s of a bad config: exit %v, want non-zero\n%s", verb, err, out)
			}
			if want := bad + `:4:14: app "api.test": instances[0].url: scheme must be http, https or h2c`; !strings.Contains(unescape(out), want) {
				t.Errorf("caddy %s output does not contain %q:\n%s", verb, want, out)
			}
		}
	})

	t.Run("run and reload", func(t *testing.T) {
		b1, b2 := newBackend(t, "b1"), newBackend(t, "b2")
		port, admin := freePort(), fmt.Sprintf("localhost:%d", freePort())
		path := writeFile(t, "config.yaml", lbyamlSite(port, admin, b1.URL))
		cmd := caddyCmd(t, "run", "--config", path, "--adapter", "lbyaml")
		var output syncBuffer
		cmd.Stdout, cmd.Stderr = &output, &output
		cmd.WaitDelay = 5 * time.Second
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			if t.Failed() {
				t.Logf("caddy output:\n%s", output.String())
			}
		})
		get := func() string {
			req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/", port), nil)
			req.Host = "api.test"
			resp, err := client.Do(req)
			if err != nil {
				return err.Error()
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			return string(body)
		}
		waitFor(t, "caddy run to serve b1", func() bool { return get() == "b1" })

		if err := os.WriteFile(path, []byte(lbyamlSite(port, admin, b2.URL)), 0o600); err != nil {
			t.Fatal(err)
		}
		if out, err := caddyCmd(t, "reload", "--config", path, "--adapter", "lbyaml", "--address", admin).CombinedOutput(); err != nil {
			t.Fatalf("caddy reload: %v\n%s", err, out)
		}
		if got := get(); got != "b2" {
			t.Fatalf("after reload: %q, want b2", got)
		}

		out, err := caddyCmd(t, "reload", "--config", bad, "--adapter", "lbyaml", "--address", admin).CombinedOutput()
		if err == nil || !strings.Contains(unescape(out), bad+":4:14:") {
			t.Fatalf("caddy reload of a bad config: %v\n%s", err, out)
		}
		if got := get(); got != "b2" {
			t.Fatalf("after a refused reload: %q, want b2", got)
		}
	})
}

// FuzzLBYAMLAdapt checks that no input makes the adapter panic, that every
// error says where, and that whatever it accepts is Caddy JSON with a
// load_balancer whose apps decode strictly and all have instances.
func FuzzLBYAMLAdapt(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "lbyaml", "*.yaml"))
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(string(b))
	}
	for _, tc := range lbyamlErrorCases {
		f.Add(tc.input)
	}
	adapter := caddyconfig.GetAdapter("lbyaml")
	f.Fuzz(func(t *testing.T, input string) {
		out, _, err := adapter.Adapt([]byte(input), map[string]any{"filename": "f.yaml"})
		if err != nil {
			if !strings.HasPrefix(err.Error(), "f.yaml:") {
				t.Fatalf("error without the file name: %v", err)
			}
			return
		}
		again, _, err := adapter.Adapt([]byte(input), nil)
		if err != nil {
			t.Fatalf("adapts with a file name, not without: %v", err)
		}
		if !bytes.Equal(out, again) {
			t.Fatalf("adapts differently without a file name:\n%s\n%s", out, again)
		}
		var cfg struct {
			Apps struct {
				HTTP struct {
					Servers map[string]struct {
						Listen []string `json:"listen"`
						Routes []struct {
							Handle []json.RawMessage `json:"handle"`
						} `json:"routes"`
					} `json:"servers"`
				} `json:"http"`
			} `json:"apps"`
		}
		if err := json.Unmarshal(out, &cfg); err != nil {
			t.Fatalf("invalid JSON: %v\n%s", err, out)
		}
		srv := cfg.Apps.HTTP.Servers["lbyaml"]
		if len(srv.Listen) != 1 || len(srv.Routes) != 1 || len(srv.Routes[0].Handle) != 1 {
			t.Fatalf("not one server with one route and one handler: %s", out)
		}
		var h struct {
			Handler string         `json:"handler"`
			Apps    []*caddylb.App `json:"apps"`
		}
		dec := json.NewDecoder(bytes.NewReader(srv.Routes[0].Handle[0]))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&h); err != nil || h.Handler != "load_balancer" || len(h.Apps) == 0 {
			t.Fatalf("handler %s: %v", srv.Routes[0].Handle[0], err)
		}
		for _, app := range h.Apps {
			if app == nil || len(app.Instances) == 0 && len(app.Split) == 0 {
				t.Fatalf("an app without instances: %s", out)
			}
		}
	})
}
