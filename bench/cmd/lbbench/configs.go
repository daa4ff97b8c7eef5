package main

import (
	"fmt"
	"strings"
)

// globalOptions is the head of every Caddyfile the benchmark writes: admin
// on loopback, nothing persisted, no automatic HTTPS, every listener on
// 127.0.0.1, only errors logged (no access logs: no site has a log
// directive), and a short grace period so Caddy stops quickly.
func globalOptions(adminPort int) string {
	return fmt.Sprintf(`{
	admin 127.0.0.1:%d
	persist_config off
	auto_https off
	default_bind 127.0.0.1
	grace_period 1s
	log {
		level ERROR
	}
}
`, adminPort)
}

func hostPorts(ports []int) []string {
	out := make([]string, len(ports))
	for i, p := range ports {
		out[i] = fmt.Sprintf("127.0.0.1:%d", p)
	}
	return out
}

func urls(ports []int) []string {
	out := hostPorts(ports)
	for i := range out {
		out[i] = "http://" + out[i]
	}
	return out
}

// reverseProxyConfig is Caddy's reverse_proxy over the backends, round robin.
func reverseProxyConfig(adminPort, port int, backends []int) string {
	return globalOptions(adminPort) + fmt.Sprintf(`
http://127.0.0.1:%d {
	reverse_proxy %s {
		lb_policy round_robin
	}
}
`, port, strings.Join(hostPorts(backends), " "))
}

// loadBalancerConfig is our load_balancer over the backends, in its short
// form (one app for every host), with the given strategy and no health
// checks (reverse_proxy has none by default either).
func loadBalancerConfig(adminPort, port int, backends []int, strategy string) string {
	return globalOptions(adminPort) + fmt.Sprintf(`
http://127.0.0.1:%d {
	load_balancer %s {
		strategy %s
	}
}
`, port, strings.Join(urls(backends), " "), strategy)
}

// noLoadBalancerConfig is the same Caddy serving a fixed answer: the
// baseline for memory.
func noLoadBalancerConfig(adminPort, port int) string {
	return globalOptions(adminPort) + fmt.Sprintf(`
http://:%d {
	respond "ok" 200
}
`, port)
}

// memApps are the apps of the memory config, by host.
var memApps = []struct{ host, strategy string }{
	{"app1.bench", "round_robin"},
	{"app2.bench", "least_connections"},
	{"app3.bench", "round_robin"},
}

// multiAppConfig is a load_balancer with three apps (by Host) of
// perApp instances each, health checked every cooldown. The instances are
// spread over the backends; each has its own base path (/i<n>), so they are
// distinct instances with their own state and checks.
func multiAppConfig(adminPort, port int, backends []int, perApp int, cooldown string) string {
	var b strings.Builder
	b.WriteString(globalOptions(adminPort))
	fmt.Fprintf(&b, "\nhttp://:%d {\n\tload_balancer {\n", port)
	n := 0
	for _, app := range memApps {
		fmt.Fprintf(&b, "\t\tapp %s {\n\t\t\tstrategy %s\n\t\t\thealth_uri /health\n\t\t\thealth_check_cooldown %s\n\t\t\tinstances", app.host, app.strategy, cooldown)
		for i := 0; i < perApp; i++ {
			fmt.Fprintf(&b, " http://127.0.0.1:%d/i%d", backends[n%len(backends)], n)
			n++
		}
		b.WriteString("\n\t\t}\n")
	}
	b.WriteString("\t}\n}\n")
	return b.String()
}

// manyInstancesConfig is one app of many instances, addrs, at port, checked
// every cooldown if checks is set, else not checked at all.
func manyInstancesConfig(adminPort, port int, addrs []string, backendPort int, checks bool, cooldown, timeout string) string {
	var b strings.Builder
	b.WriteString(globalOptions(adminPort))
	fmt.Fprintf(&b, "\nhttp://:%d {\n\tload_balancer {\n\t\tapp * {\n\t\t\tstrategy round_robin\n", port)
	if checks {
		fmt.Fprintf(&b, "\t\t\thealth_uri /health\n\t\t\thealth_check_cooldown %s\n\t\t\ttimeout %s\n", cooldown, timeout)
	}
	const perLine = 50
	for i := 0; i < len(addrs); i += perLine {
		b.WriteString("\t\t\tinstances")
		for _, a := range addrs[i:min(i+perLine, len(addrs))] {
			fmt.Fprintf(&b, " http://%s:%d", a, backendPort)
		}
		b.WriteString("\n")
	}
	b.WriteString("\t\t}\n\t}\n}\n")
	return b.String()
}

// manyUpstreamsConfig is Caddy's reverse_proxy with many upstreams, addrs
// at port, with its own active health checks every interval: the same
// work as manyInstancesConfig's checks, done by Caddy.
func manyUpstreamsConfig(adminPort, port int, addrs []string, backendPort int, interval, timeout string) string {
	var b strings.Builder
	b.WriteString(globalOptions(adminPort))
	fmt.Fprintf(&b, "\nhttp://:%d {\n\treverse_proxy {\n\t\tlb_policy round_robin\n", port)
	fmt.Fprintf(&b, "\t\thealth_uri /health\n\t\thealth_interval %s\n\t\thealth_timeout %s\n", interval, timeout)
	const perLine = 50
	for i := 0; i < len(addrs); i += perLine {
		b.WriteString("\t\tto")
		for _, a := range addrs[i:min(i+perLine, len(addrs))] {
			fmt.Fprintf(&b, " %s:%d", a, backendPort)
		}
		b.WriteString("\n")
	}
	b.WriteString("\t}\n}\n")
	return b.String()
}
