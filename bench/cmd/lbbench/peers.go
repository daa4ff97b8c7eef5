package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// The peers: other proxies measured beside Caddy in the same rounds, so
// that every claim about load_balancer is also a ratio to the best of them.
// Their keys are the same in the HTTP/1.1 and the gRPC parts.
const (
	peerHAProxy = "haproxy"
	peerNginx   = "nginx"
)

// peerKeys are the cases whose best (the one with the most requests per
// second in a round) is the base of the "× peer" ratios.
var peerKeys = []string{peerHAProxy, peerNginx}

// isPeer reports whether key is one of peerKeys.
func isPeer(key string) bool {
	for _, k := range peerKeys {
		if k == key {
			return true
		}
	}
	return false
}

// haproxyConfig is HAProxy in front of the backends, listening on
// 127.0.0.1:port only: one thread (nbthread 1, the counterpart of Caddy on
// one pinned CPU), round robin, keep-alive on both sides with server
// connections shared between clients (http-reuse always), no health checks
// (no "check" on the servers), timeouts far longer than any run, and no
// logging (no "log" line anywhere). With grpc, both sides speak h2c: the
// bind and every server have "proto h2".
func haproxyConfig(port int, backends []int, grpc bool) string {
	proto := ""
	if grpc {
		proto = " proto h2"
	}
	var b strings.Builder
	b.WriteString(`global
	nbthread 1
	maxconn 4096

defaults
	mode http
	option http-keep-alive
	http-reuse always
	timeout connect 5s
	timeout client 60s
	timeout server 60s
	timeout http-request 60s
	timeout http-keep-alive 60s

`)
	fmt.Fprintf(&b, "frontend front\n\tbind 127.0.0.1:%d%s\n\tdefault_backend backends\n\n", port, proto)
	b.WriteString("backend backends\n\tbalance roundrobin\n")
	for i, p := range backends {
		fmt.Fprintf(&b, "\tserver b%d 127.0.0.1:%d%s\n", i+1, p, proto)
	}
	return b.String()
}

// nginxSetup is what nginxConfig needs besides the backends.
type nginxSetup struct {
	Dir      string // nginx's prefix (-p): its pid, lock and temporary files go here
	ErrorLog string // file for nginx's error log
	Port     int    // it listens on 127.0.0.1:Port only
	Backends []int  // ports of the backends on 127.0.0.1
	GRPC     bool   // h2c front (listen ... http2) and grpc_pass, instead of HTTP/1.1 proxying
}

// nginxConfig is nginx in front of the backends: a single process
// (master_process off, so the process the benchmark starts is the one that
// serves and its /proc times are all of nginx's CPU; worker_processes 1
// would mean the same with a master), in the foreground (daemon off), round
// robin over an upstream with up to 64 idle keep-alive connections, no
// access log, the error log at warn, and every file it writes (pid, lock,
// temporary files) under s.Dir. Keep-alive limits are raised so that
// neither side closes a connection during a run. For HTTP/1.1 it proxies
// with HTTP/1.1 and an empty Connection header (needed for upstream
// keep-alive), and never spools a response to disk
// (proxy_max_temp_file_size 0: it buffers in memory and waits for the
// client instead).
func nginxConfig(s nginxSetup) string {
	var b strings.Builder
	path := func(name string) string { return filepath.Join(s.Dir, name) }
	fmt.Fprintf(&b, `daemon off;
master_process off;
worker_processes 1;
pid %s;
lock_file %s;
error_log %s warn;

events {
	worker_connections 4096;
}

http {
	access_log off;
	client_body_temp_path %s;
	proxy_temp_path %s;
	fastcgi_temp_path %s;
	uwsgi_temp_path %s;
	scgi_temp_path %s;
	keepalive_requests 1000000;
	keepalive_timeout 60s;

	upstream backends {
`, path("nginx.pid"), path("nginx.lock"), s.ErrorLog,
		path("client_body_temp"), path("proxy_temp"), path("fastcgi_temp"), path("uwsgi_temp"), path("scgi_temp"))
	for _, p := range s.Backends {
		fmt.Fprintf(&b, "\t\tserver 127.0.0.1:%d;\n", p)
	}
	b.WriteString("\t\tkeepalive 64;\n\t\tkeepalive_requests 1000000;\n\t\tkeepalive_timeout 60s;\n\t}\n\n\tserver {\n")
	if s.GRPC {
		fmt.Fprintf(&b, "\t\tlisten 127.0.0.1:%d http2;\n\t\tlocation / {\n\t\t\tgrpc_pass grpc://backends;\n\t\t}\n", s.Port)
	} else {
		fmt.Fprintf(&b, "\t\tlisten 127.0.0.1:%d;\n\t\tlocation / {\n", s.Port)
		b.WriteString("\t\t\tproxy_pass http://backends;\n\t\t\tproxy_http_version 1.1;\n\t\t\tproxy_set_header Connection \"\";\n\t\t\tproxy_max_temp_file_size 0;\n\t\t}\n")
	}
	b.WriteString("\t}\n}\n")
	return b.String()
}

// respondConfig is Caddy answering every request itself with a body of
// body bytes ('x's, like the backends'), no proxying at all: the ceiling of
// what Caddy's HTTP server does on this machine, not a proxy.
func respondConfig(adminPort, port, body int) string {
	return globalOptions(adminPort) + fmt.Sprintf(`
http://127.0.0.1:%d {
	respond "%s" 200
}
`, port, strings.Repeat("x", body))
}

// peerBin resolves the command of peer key (the -haproxy or -nginx
// option, a name looked up on the PATH or a path).
func (o options) peerBin(key string) (string, error) {
	name := o.haproxyBin
	if key == peerNginx {
		name = o.nginxBin
	}
	path, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s: %w (bench/run.sh installs it)", key, err)
	}
	return path, nil
}

// peerVersion is the first line of the peer's own version output
// ("HAProxy version 2.6.12-1+deb12u4 2023/12/16", "nginx/1.22.1"), or a
// note that it was not found.
func (o options) peerVersion(key string) string {
	bin, err := o.peerBin(key)
	if err != nil {
		return key + " not found"
	}
	// nginx -v prints to standard error, haproxy -v to standard output.
	out, _ := exec.Command(bin, "-v").CombinedOutput()
	line := firstLine(string(out))
	if key == peerHAProxy {
		// "HAProxy version 2.6.12-1+deb12u4 2023/12/16 - https://haproxy.org/"
		line, _, _ = strings.Cut(line, " - ")
	}
	return strings.TrimPrefix(line, "nginx version: ")
}

// startPeer writes the config of peer key (haproxy or nginx) for case run
// name, runs the peer on it in the foreground, pinned to the server CPUs
// like Caddy, and waits until ready says it serves. The config is kept in
// the results' configs/ (name.haproxy.cfg or name.nginx.conf), the peer's
// output in logs/. For nginx, config must put its files under
// b.nginxDir(name), which startPeer creates.
func (b *bench) startPeer(key, name, config string, ready func(*proc) error) (*proc, error) {
	bin, err := b.opt.peerBin(key)
	if err != nil {
		return nil, err
	}
	var file string
	var argv []string
	switch key {
	case peerHAProxy:
		file = name + ".haproxy.cfg"
		// -db: stay in the foreground, no daemon, no master-worker.
		argv = []string{bin, "-db", "-f", filepath.Join(b.work, file)}
	case peerNginx:
		dir := b.nginxDir(name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		file = name + ".nginx.conf"
		// -e stderr: errors before the config is read go to the log, not
		// to a compiled-in path such as /var/log/nginx.
		argv = []string{bin, "-p", dir, "-c", filepath.Join(b.work, file), "-e", "stderr"}
	default:
		return nil, fmt.Errorf("unknown peer %q", key)
	}
	if err := os.WriteFile(filepath.Join(b.work, file), []byte(config), 0o644); err != nil {
		return nil, err
	}
	_ = os.WriteFile(filepath.Join(b.out, "configs", file), []byte(config), 0o644)
	logPath := b.peerLog(key, name)
	p, err := b.procs.start(key+" "+name, b.opt.serverCPUs, nil, logPath, argv...)
	if err != nil {
		return nil, err
	}
	if err := ready(p); err != nil {
		stop(p, 5*time.Second)
		return nil, fmt.Errorf("%v (see %s)", err, logPath)
	}
	return p, nil
}

// nginxDir is nginx's prefix directory for case run name, in the work
// directory.
func (b *bench) nginxDir(name string) string { return filepath.Join(b.work, "nginx-"+name) }

// peerLog is the log file of peer key for case run name.
func (b *bench) peerLog(key, name string) string {
	return filepath.Join(b.out, "logs", key+"-"+name+".log")
}

// waitTCP waits until addr accepts TCP connections. It fails if p exits
// first or timeout passes. It is the readiness check of fronts that speak
// only h2c, where an HTTP/1.1 request would not do.
func waitTCP(p *proc, addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error = errors.New("not tried")
	for time.Now().Before(deadline) {
		if p.exited() {
			return fmt.Errorf("%s exited: %v", p.name, p.err)
		}
		c, err := net.DialTimeout("tcp4", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		last = err
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s not listening on %s after %v: %v", p.name, addr, timeout, last)
}
