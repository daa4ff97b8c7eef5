package caddylb_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/golb/caddy-lb/report"
)

// dashUser and dashPassword are the basic_auth credentials of the
// dashboard in the tests.
const dashUser, dashPassword = "admin", "s3cret"

// dashHash is the bcrypt hash of dashPassword for basic_auth, as
// `caddy hash-password` makes it but at the lowest cost, so that checking
// it does not slow the tests down.
var dashHash = sync.OnceValue(func() string {
	h, err := bcrypt.GenerateFromPassword([]byte(dashPassword), bcrypt.MinCost)
	if err != nil {
		panic(err)
	}
	return string(h)
})

// dashReq is a request to the site under test.
type dashReq struct {
	method string
	path   string
	auth   bool              // send the dashboard's credentials
	header map[string]string // more headers
	body   string
}

// do sends the request and returns the response with its body read.
func (q dashReq) do(t *testing.T, s *site) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(q.method, s.url(q.path), strings.NewReader(q.body))
	if err != nil {
		t.Fatal(err)
	}
	if q.auth {
		req.SetBasicAuth(dashUser, dashPassword)
	}
	for k, v := range q.header {
		req.Header.Set(k, v)
	}
	resp, err := noRedirectClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", q.method, q.path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", q.method, q.path, err)
	}
	return resp, string(body)
}

// noRedirectClient is the tests' client, but it shows redirects rather
// than following them.
var noRedirectClient = &http.Client{
	Transport:     client.Transport,
	Timeout:       client.Timeout,
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// sameOrigin are the headers a browser sends with a fetch() POST from the
// dashboard's page to its own origin.
func sameOrigin(s *site) map[string]string {
	return map[string]string{
		"Origin":         strings.TrimSuffix(s.url(""), "/"),
		"Sec-Fetch-Site": "same-origin",
		"Content-Type":   "application/json",
	}
}

// dashboardSite loads a site with one load-balanced app and the dashboard
// under /lb/ behind basic_auth, and returns the backends' URLs.
func dashboardSite(t *testing.T, s *site, dashOptions string) (b1, b2 string) {
	t.Helper()
	one, two := newBackend(t, "one"), newBackend(t, "two")
	s.load(fmt.Sprintf(`:{port} {
	handle /lb/* {
		basic_auth {
			%s %s
		}
		load_balancer_dashboard {
			%s
		}
	}
	load_balancer {
		app api.example.com {
			health_uri /health
			health_check_cooldown 1h
			instances %s %s
		}
	}
}`, dashUser, dashHash(), dashOptions, one.URL, two.URL))
	// With no more checks for an hour, the report stays put once the
	// first checks are done.
	waitFor(t, "the first health checks", func() bool {
		for _, app := range fetchReport(t).Apps {
			for _, in := range app.Instances {
				if in.LastChecked == nil {
					return false
				}
			}
		}
		return true
	})
	return one.URL, two.URL
}

// externalRef matches an absolute http(s) URL, or a protocol-relative one
// in an attribute.
var externalRef = regexp.MustCompile(`(?i)https?:|(src|href|action)\s*=\s*["']?//`)

// TestDashboardServed checks the dashboard behind basic_auth: the page, the
// report it polls and the answers to what it does not serve.
func TestDashboardServed(t *testing.T) {
	s := newSite(t)
	dashboardSite(t, s, "")

	t.Run("page", func(t *testing.T) {
		resp, body := dashReq{method: "GET", path: "/lb/", auth: true}.do(t, s)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		if ct := resp.Header.Get("Content-Type"); ct != "text/html; charset=utf-8" {
			t.Errorf("Content-Type %q, want text/html; charset=utf-8", ct)
		}
		if !strings.HasPrefix(body, "<!doctype html>") || !strings.Contains(body, "<script>") {
			t.Errorf("not the dashboard page: %.200s", body)
		}
		if m := externalRef.FindString(body); m != "" {
			t.Errorf("page refers to something outside itself: %q", m)
		}
		if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") {
			t.Errorf("Content-Security-Policy %q, want default-src 'none'", csp)
		}
	})

	t.Run("report.json is the report", func(t *testing.T) {
		resp, body := dashReq{method: "GET", path: "/lb/report.json", auth: true}.do(t, s)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type %q, want application/json", ct)
		}
		if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
			t.Errorf("Cache-Control %q, want no-store", cc)
		}
		var got report.Report
		if err := json.Unmarshal([]byte(body), &got); err != nil {
			t.Fatalf("%v: %s", err, body)
		}
		if want := fetchReport(t); !reflect.DeepEqual(got, want) {
			t.Errorf("report.json:\n%+v\nadmin report:\n%+v", got, want)
		}
		if len(got.Apps) != 1 || len(got.Apps[0].Instances) != 2 {
			t.Errorf("want 1 app with 2 instances, got %+v", got)
		}
		if strings.Contains(body, "drain_available") {
			t.Errorf("read-only dashboard offers draining: %s", body)
		}
	})

	tests := []struct {
		name   string
		req    dashReq
		status int
		allow  string
		inBody string
	}{
		{"page without credentials", dashReq{method: "GET", path: "/lb/"}, 401, "", ""},
		{"report without credentials", dashReq{method: "GET", path: "/lb/report.json"}, 401, "", ""},
		{"drain without credentials", dashReq{method: "POST", path: "/lb/drain", header: sameOrigin(s), body: `{"url":"x"}`}, 401, "", ""},
		{"wrong password", dashReq{method: "GET", path: "/lb/", header: map[string]string{"Authorization": "Basic YWRtaW46bm8="}}, 401, "", ""},
		{"drain, read-only", dashReq{method: "POST", path: "/lb/drain", auth: true, header: sameOrigin(s), body: `{"url":"x"}`}, 403, "", "allow_drain"},
		{"undrain, read-only", dashReq{method: "POST", path: "/lb/undrain", auth: true, header: sameOrigin(s), body: `{"url":"x"}`}, 403, "", "allow_drain"},
		{"page, PUT", dashReq{method: "PUT", path: "/lb/", auth: true}, 405, "GET, HEAD", "PUT"},
		{"report, DELETE", dashReq{method: "DELETE", path: "/lb/report.json", auth: true}, 405, "GET, HEAD", "DELETE"},
		{"drain, GET", dashReq{method: "GET", path: "/lb/drain", auth: true}, 405, "POST", "GET"},
		{"page, HEAD", dashReq{method: "HEAD", path: "/lb/", auth: true}, 200, "", ""},
		{"not a dashboard path", dashReq{method: "GET", path: "/lb/x", auth: true}, 302, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := tt.req.do(t, s)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.status, body)
			}
			if got := resp.Header.Get("Allow"); got != tt.allow {
				t.Errorf("Allow %q, want %q", got, tt.allow)
			}
			if !strings.Contains(body, tt.inBody) {
				t.Errorf("body %q lacks %q", body, tt.inBody)
			}
		})
	}
}

// TestDashboardDrain checks drain and undrain through Caddy, on the load
// balancer's own drain path: allowed only with allow_drain, only
// same-origin.
func TestDashboardDrain(t *testing.T) {
	s := newSite(t)
	b1, _ := dashboardSite(t, s, "allow_drain")
	body := fmt.Sprintf(`{"host":"api.example.com","url":%q}`, b1)
	crossSite := map[string]string{"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site", "Content-Type": "application/json"}
	foreignOrigin := map[string]string{"Origin": "http://evil.example", "Content-Type": "application/json"}

	// In order: each row starts where the one before left the instance.
	tests := []struct {
		name      string
		req       dashReq
		status    int
		wantState string // b1's, after the request
	}{
		{"drain", dashReq{method: "POST", path: "/lb/drain", auth: true, header: sameOrigin(s), body: body}, 200, "draining"},
		{"undrain", dashReq{method: "POST", path: "/lb/undrain", auth: true, header: sameOrigin(s), body: body}, 200, "healthy"},
		{"cross-site", dashReq{method: "POST", path: "/lb/drain", auth: true, header: crossSite, body: body}, 403, "healthy"},
		{"foreign Origin", dashReq{method: "POST", path: "/lb/drain", auth: true, header: foreignOrigin, body: body}, 403, "healthy"},
		{"form", dashReq{method: "POST", path: "/lb/drain", auth: true, header: map[string]string{"Sec-Fetch-Site": "same-origin", "Content-Type": "text/plain"}, body: body}, 415, "healthy"},
		{"unknown method", dashReq{method: "PATCH", path: "/lb/drain", auth: true, header: sameOrigin(s), body: body}, 405, "healthy"},
		{"unknown instance", dashReq{method: "POST", path: "/lb/drain", auth: true, header: sameOrigin(s), body: `{"host":"api.example.com","url":"http://127.0.0.1:1"}`}, 404, "healthy"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, got := tt.req.do(t, s)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.status, got)
			}
			if st := instanceOf(t, fetchReport(t), "api.example.com", b1).State; st != tt.wantState {
				t.Errorf("instance state %q after the request, want %q", st, tt.wantState)
			}
			// The page shows drain buttons, since drains can succeed.
			_, rep := dashReq{method: "GET", path: "/lb/report.json", auth: true}.do(t, s)
			if !strings.Contains(rep, `"drain_available":true`) {
				t.Errorf("drain_available missing: %s", rep)
			}
		})
	}
}

// TestDashboardMounts checks the dashboard under the ways a site can mount
// it: its relative URLs must resolve under the mount path.
func TestDashboardMounts(t *testing.T) {
	b := newBackend(t, "one")
	lb := fmt.Sprintf(`load_balancer {
		app api.example.com {
			instances %s
		}
	}`, b.URL)
	tests := []struct {
		name     string
		site     string
		path     string
		status   int
		location string
		json     bool
	}{
		{"handle_path: page", "handle_path /lb/* {\n load_balancer_dashboard\n}", "/lb/", 200, "", false},
		{"handle_path: report", "handle_path /lb/* {\n load_balancer_dashboard\n}", "/lb/report.json", 200, "", true},
		{"handle_path /lb*: no slash", "handle_path /lb* {\n load_balancer_dashboard\n}", "/lb", 302, "./lb/", false},
		{"handle /lb*: no slash", "handle /lb* {\n load_balancer_dashboard\n}", "/lb", 302, "./lb/", false},
		{"handle /lb*: page", "handle /lb* {\n load_balancer_dashboard\n}", "/lb/", 200, "", false},
		// At the top level the directive order puts the dashboard before
		// the load balancer, which would otherwise take the request.
		{"top level with a matcher: page", "load_balancer_dashboard /status/*", "/status/", 200, "", false},
		{"top level with a matcher: report", "load_balancer_dashboard /status/*", "/status/report.json", 200, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSite(t)
			s.load(":{port} {\n" + tt.site + "\n" + lb + "\n}")
			resp, body := dashReq{method: "GET", path: tt.path}.do(t, s)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d: %.200s", resp.StatusCode, tt.status, body)
			}
			if got := resp.Header.Get("Location"); got != tt.location {
				t.Errorf("Location %q, want %q", got, tt.location)
			}
			switch ct := resp.Header.Get("Content-Type"); {
			case tt.status != 200:
			case tt.json:
				var rep report.Report
				if err := json.Unmarshal([]byte(body), &rep); err != nil || len(rep.Apps) != 1 {
					t.Errorf("want the report with one app, got %v: %.200s", err, body)
				}
			case !strings.HasPrefix(ct, "text/html"):
				t.Errorf("Content-Type %q, want the page", ct)
			}
		})
	}
}
