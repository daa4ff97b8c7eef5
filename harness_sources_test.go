package caddylb_test

// The harness's sources of dynamic instances: a real DNS server and real
// etcd members, all on 127.0.0.1.

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// dnsServer is a DNS server on 127.0.0.1 (UDP) that answers SRV and A
// queries from records the test sets, and SERVFAIL while failing.
type dnsServer struct {
	addr string

	mu      sync.Mutex
	srv     map[string][]*dns.SRV // by name, FQDN
	a       map[string][]net.IP   // by name, FQDN
	failing bool
	queries int
}

// newDNSServer starts a DNS server, stopped when the test ends.
func newDNSServer(t testing.TB) *dnsServer {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &dnsServer{addr: pc.LocalAddr().String(), srv: map[string][]*dns.SRV{}, a: map[string][]net.IP{}}
	started := make(chan struct{})
	server := &dns.Server{PacketConn: pc, Handler: s, NotifyStartedFunc: func() { close(started) }}
	go func() { _ = server.ActivateAndServe() }()
	recv(t, started, "the DNS server to start")
	t.Cleanup(func() { _ = server.Shutdown() })
	return s
}

// setSRV sets the SRV records of name: targets "host:port", all of
// priority 10 and weight 1 (the weight of a configured instance).
func (s *dnsServer) setSRV(name string, targets ...string) {
	var recs []srvRecord
	for _, target := range targets {
		recs = append(recs, srvRecord{target: target, priority: 10, weight: 1})
	}
	s.setSRVRecords(name, recs...)
}

// srvRecord is an SRV record of a test: its target "host:port", priority
// and weight.
type srvRecord struct {
	target           string
	priority, weight uint16
}

// setSRVRecords sets the SRV records of name.
func (s *dnsServer) setSRVRecords(name string, records ...srvRecord) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var recs []*dns.SRV
	for _, r := range records {
		host, port, _ := net.SplitHostPort(r.target)
		var p uint16
		fmt.Sscan(port, &p)
		recs = append(recs, &dns.SRV{Hdr: dns.RR_Header{Name: dns.Fqdn(name), Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: 1},
			Priority: r.priority, Weight: r.weight, Port: p, Target: dns.Fqdn(host)})
	}
	s.srv[dns.Fqdn(name)] = recs
}

// setA sets the A records of name.
func (s *dnsServer) setA(name string, ips ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var list []net.IP
	for _, ip := range ips {
		list = append(list, net.ParseIP(ip))
	}
	s.a[dns.Fqdn(name)] = list
}

// fail makes the server answer SERVFAIL (true) or answer again.
func (s *dnsServer) fail(failing bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failing = failing
}

// ServeDNS implements dns.Handler.
func (s *dnsServer) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.queries++
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	if s.failing {
		m.Rcode = dns.RcodeServerFailure
		_ = w.WriteMsg(m)
		return
	}
	known := false
	for _, q := range req.Question {
		name := strings.ToLower(q.Name)
		_, isSRV := s.srv[name]
		_, isA := s.a[name]
		known = known || isSRV || isA
		switch q.Qtype {
		case dns.TypeSRV:
			for _, r := range s.srv[name] {
				m.Answer = append(m.Answer, r)
			}
		case dns.TypeA:
			for _, ip := range s.a[name] {
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 1}, A: ip})
			}
		}
	}
	if !known {
		m.Rcode = dns.RcodeNameError
	}
	_ = w.WriteMsg(m)
}

// etcdBinary returns the path of etcd (Debian's etcd-server package), or
// skips the test: .ci/run installs it.
func etcdBinary(t testing.TB) string {
	t.Helper()
	for _, p := range []string{"etcd", "/usr/bin/etcd"} {
		if path, err := exec.LookPath(p); err == nil {
			return path
		}
	}
	t.Skip("etcd not found: the etcd tests need Debian's etcd-server package (apt-get install etcd-server), which .ci/run installs")
	return ""
}

// etcdMember is one etcd process of a cluster on 127.0.0.1.
type etcdMember struct {
	name               string
	clientURL, peerURL string
	dir                string
	cmd                *exec.Cmd
	exited             chan struct{}
	log                *syncBuffer
}

// etcdCluster is a cluster of etcd members started by a test.
type etcdCluster struct {
	t       testing.TB
	bin     string
	members []*etcdMember
}

// newEtcdCluster starts a cluster of n members on 127.0.0.1 ports, stopped
// when the test ends, and waits until it serves.
func newEtcdCluster(t testing.TB, n int) *etcdCluster {
	t.Helper()
	c := &etcdCluster{t: t, bin: etcdBinary(t)}
	var initial []string
	for i := range n {
		m := &etcdMember{
			name:      fmt.Sprintf("m%d", i),
			clientURL: fmt.Sprintf("http://127.0.0.1:%d", freePort()),
			peerURL:   fmt.Sprintf("http://127.0.0.1:%d", freePort()),
			dir:       filepath.Join(t.TempDir(), fmt.Sprintf("m%d", i)),
		}
		c.members = append(c.members, m)
		initial = append(initial, m.name+"="+m.peerURL)
	}
	for _, m := range c.members {
		c.start(m, strings.Join(initial, ","))
	}
	t.Cleanup(func() {
		for _, m := range c.members {
			c.stop(m)
		}
	})
	c.waitHealthy(c.members...)
	return c
}

// start starts member m (again: its data directory is kept).
func (c *etcdCluster) start(m *etcdMember, initial string) {
	c.t.Helper()
	m.log = new(syncBuffer)
	m.cmd = exec.Command(c.bin,
		"--name", m.name,
		"--data-dir", m.dir,
		"--listen-client-urls", m.clientURL, "--advertise-client-urls", m.clientURL,
		"--listen-peer-urls", m.peerURL, "--initial-advertise-peer-urls", m.peerURL,
		"--initial-cluster", initial, "--initial-cluster-state", "new",
		"--initial-cluster-token", "caddy-lb-test",
		"--heartbeat-interval", "50", "--election-timeout", "500",
		"--log-level", "warn")
	m.cmd.Stdout, m.cmd.Stderr = m.log, m.log
	if err := m.cmd.Start(); err != nil {
		c.t.Fatalf("starting etcd %s: %v", m.name, err)
	}
	m.exited = make(chan struct{})
	cmd := m.cmd
	go func() {
		_ = cmd.Wait()
		close(m.exited)
	}()
}

// initialCluster returns the --initial-cluster value of the cluster.
func (c *etcdCluster) initialCluster() string {
	var parts []string
	for _, m := range c.members {
		parts = append(parts, m.name+"="+m.peerURL)
	}
	return strings.Join(parts, ",")
}

// stop stops member m, if it runs.
func (c *etcdCluster) stop(m *etcdMember) {
	if m.cmd == nil || m.cmd.Process == nil {
		return
	}
	select {
	case <-m.exited:
		return
	default:
	}
	_ = m.cmd.Process.Kill()
	<-m.exited
}

// restart starts member m again.
func (c *etcdCluster) restart(m *etcdMember) {
	c.t.Helper()
	c.start(m, c.initialCluster())
}

// endpoints returns the client URLs of the members.
func (c *etcdCluster) endpoints() []string {
	var eps []string
	for _, m := range c.members {
		eps = append(eps, m.clientURL)
	}
	return eps
}

// client returns a client of the cluster, closed when the test ends.
func (c *etcdCluster) client() *clientv3.Client {
	c.t.Helper()
	cl, err := clientv3.New(clientv3.Config{Endpoints: c.endpoints(), DialTimeout: 2 * time.Second})
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { cl.Close() })
	return cl
}

// waitHealthy waits until each of members answers a read.
func (c *etcdCluster) waitHealthy(members ...*etcdMember) {
	c.t.Helper()
	for _, m := range members {
		cl, err := clientv3.New(clientv3.Config{Endpoints: []string{m.clientURL}, DialTimeout: time.Second})
		if err != nil {
			c.t.Fatal(err)
		}
		waitFor(c.t, "etcd "+m.name+" to serve", func() bool {
			select {
			case <-m.exited:
				c.t.Fatalf("etcd %s exited:\n%s", m.name, m.log.String())
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			_, err := cl.Get(ctx, "health-probe")
			return err == nil
		})
		cl.Close()
	}
}
