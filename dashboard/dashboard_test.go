package dashboard

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/golb/caddy-lb/report"
)

// serve runs r through h and returns the response.
func serve(t *testing.T, h *Handler, r *http.Request) *httptest.ResponseRecorder {
	t.Helper()
	w := httptest.NewRecorder()
	if err := h.ServeHTTP(w, r, caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error {
		t.Error("the dashboard called the next handler")
		return nil
	})); err != nil {
		t.Fatalf("ServeHTTP: %v", err)
	}
	return w
}

// withOriginal gives r the original request Caddy records before rewrites,
// with the path the browser asked for.
func withOriginal(r *http.Request, browserPath string) *http.Request {
	orig := http.Request{URL: &url.URL{Path: browserPath}}
	return r.WithContext(context.WithValue(r.Context(), caddyhttp.OriginalRequestCtxKey, orig))
}

func TestRouting(t *testing.T) {
	tests := []struct {
		name        string
		method      string
		path        string
		browserPath string // the path before rewrites, if one was stripped
		status      int
		contentType string
		allow       string
		location    string
	}{
		{name: "page at the mount path", method: "GET", path: "/lb/", status: 200, contentType: "text/html; charset=utf-8"},
		{name: "page, HEAD", method: "HEAD", path: "/lb/", status: 200, contentType: "text/html; charset=utf-8"},
		{name: "page at the site root", method: "GET", path: "/", status: 200, contentType: "text/html; charset=utf-8"},
		{name: "page deeper down", method: "GET", path: "/lb/x/", status: 200, contentType: "text/html; charset=utf-8"},
		{name: "mount path without slash", method: "GET", path: "/lb", status: 302, location: "./lb/"},
		{name: "other name", method: "GET", path: "/lb/index.html", status: 302, location: "./index.html/"},
		{name: "colon in the name", method: "GET", path: "/lb/a:b", status: 302, location: "./a:b/"},
		{name: "handle_path: stripped to /", method: "GET", path: "/", browserPath: "/lb/", status: 200, contentType: "text/html; charset=utf-8"},
		{name: "handle_path: mount path without slash", method: "GET", path: "/", browserPath: "/lb", status: 302, location: "./lb/"},
		{name: "handle_path: report", method: "GET", path: "/report.json", browserPath: "/lb/report.json", status: 200, contentType: "application/json"},
		{name: "page, POST", method: "POST", path: "/lb/", status: 405, allow: "GET, HEAD", contentType: "application/json"},
		{name: "page, DELETE", method: "DELETE", path: "/lb/", status: 405, allow: "GET, HEAD", contentType: "application/json"},
		{name: "report", method: "GET", path: "/lb/report.json", status: 200, contentType: "application/json"},
		{name: "report, HEAD", method: "HEAD", path: "/lb/report.json", status: 200, contentType: "application/json"},
		{name: "report, POST", method: "POST", path: "/lb/report.json", status: 405, allow: "GET, HEAD", contentType: "application/json"},
		{name: "drain, GET", method: "GET", path: "/lb/drain", status: 405, allow: "POST", contentType: "application/json"},
		{name: "undrain, PUT", method: "PUT", path: "/lb/undrain", status: 405, allow: "POST", contentType: "application/json"},
		{name: "drain, read-only", method: "POST", path: "/lb/drain", status: 403, contentType: "application/json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(tt.method, "http://lb.example"+tt.path, nil)
			if tt.browserPath != "" {
				r = withOriginal(r, tt.browserPath)
			}
			w := serve(t, new(Handler), r)
			if w.Code != tt.status {
				t.Fatalf("status %d, want %d; body %s", w.Code, tt.status, w.Body)
			}
			for _, h := range []struct{ name, want string }{
				{"Content-Type", tt.contentType}, {"Allow", tt.allow}, {"Location", tt.location},
			} {
				if got := w.Header().Get(h.name); got != h.want {
					t.Errorf("%s: %q, want %q", h.name, got, h.want)
				}
			}
			if got := w.Header().Get("Cache-Control"); got != "no-store" {
				t.Errorf("Cache-Control: %q, want no-store", got)
			}
			if ct := w.Header().Get("Content-Type"); strings.HasPrefix(ct, "application/json") {
				if !json.Valid(w.Body.Bytes()) {
					t.Errorf("body is not JSON: %s", w.Body)
				}
			}
		})
	}
}

// TestPage checks the page is self-contained and that its Content-Security
// Policy, which enforces that in the browser, lets its own code run.
func TestPage(t *testing.T) {
	w := serve(t, new(Handler), httptest.NewRequest("GET", "/lb/", nil))
	body := w.Body.String()
	if body != string(page) {
		t.Fatal("GET /lb/ did not return the page")
	}
	for _, bad := range []*regexp.Regexp{
		regexp.MustCompile(`(?i)https?:`),                   // no absolute URL at all
		regexp.MustCompile(`(?i)(src|href)\s*=\s*"[^"d#r]`), // only data:, #… and report.json
		regexp.MustCompile(`(?i)@import|url\(`),             // no CSS fetches
		regexp.MustCompile(`(?i)\son[a-z]+\s*=`),            // inline handlers: blocked by the CSP
		regexp.MustCompile(`(?i)\sstyle\s*=`),               // style attributes: blocked by the CSP
	} {
		if m := bad.FindString(body); m != "" {
			t.Errorf("page contains %q (%s)", m, bad)
		}
	}
	for _, tag := range []string{"<script", "<style"} {
		if n := strings.Count(body, tag); n != 1 {
			t.Errorf("page has %d %s elements; the CSP allows exactly one, by hash", n, tag)
		}
	}
	policy := w.Header().Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'none'", "connect-src 'self'", "frame-ancestors 'none'", "script-src 'sha256-", "style-src 'sha256-"} {
		if !strings.Contains(policy, want) {
			t.Errorf("Content-Security-Policy %q lacks %q", policy, want)
		}
	}
	if strings.Contains(policy, "unsafe") {
		t.Errorf("Content-Security-Policy %q allows unsafe sources", policy)
	}
	for _, want := range []string{`fetch("report.json"`, "REFRESH_MS = 2000", `el("th"`, `scope = "col"`} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q", want)
		}
	}
}

func TestPagePolicyHashes(t *testing.T) {
	// sha256 of "x" and of "y", base64 (printf x | sha256sum | xxd -r -p | base64).
	got := pagePolicy([]byte("<style>x</style><script>y</script>"))
	for _, want := range []string{
		"style-src 'sha256-LXEWQrcmsEQBYnyp+6wy9chTD7GQPMTbAiWHF5IaSIE='",
		"script-src 'sha256-ofzkNjhU/4iM/0uOeHXWAMJoI5BBKoz3mzfQsRFIsPo='",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("policy %q lacks %q", got, want)
		}
	}
}

// fakeSource is a load balancer with one app, api.example.com (and a
// catch-all), whose instances are whatever URL it is asked to drain: it
// records the calls.
type fakeSource struct {
	calls   []string
	unknown bool // it has no such instance
}

func (f *fakeSource) ReportApps() []report.App { return []report.App{{Host: "api.example.com"}} }

func (f *fakeSource) Drain(host, url string, drain bool) (apps, instances int) {
	f.calls = append(f.calls, fmt.Sprintf("%s %s %v", host, url, drain))
	if f.unknown {
		return 1, 0
	}
	return 1, 1
}

// register adds f to the report for the test. Outside a running Caddy
// config, sources registered with a plain context are the running ones.
func (f *fakeSource) register(t *testing.T) {
	t.Cleanup(report.Register(context.Background(), f))
}

func TestDrain(t *testing.T) {
	const good = `{"host":"api.example.com","url":"http://127.0.0.1:9001"}`
	sameOrigin := map[string]string{"Sec-Fetch-Site": "same-origin", "Origin": "http://lb.example"}
	tests := []struct {
		name       string
		allow      bool
		unknown    bool // the load balancer has no such instance
		path       string
		header     map[string]string
		body       string
		status     int
		wantCall   string
		wantErrMsg string
	}{
		{name: "drain", allow: true, path: "/lb/drain", header: sameOrigin, body: good, status: 200, wantCall: "api.example.com http://127.0.0.1:9001 true"},
		{name: "undrain", allow: true, path: "/lb/undrain", header: sameOrigin, body: good, status: 200, wantCall: "api.example.com http://127.0.0.1:9001 false"},
		{name: "catch-all app", allow: true, path: "/lb/drain", header: sameOrigin, body: `{"url":"http://a"}`, status: 200, wantCall: " http://a true"},
		{name: "not a browser: no Origin, no Sec-Fetch-Site", allow: true, path: "/lb/drain", body: good, status: 200, wantCall: "api.example.com http://127.0.0.1:9001 true"},
		{name: "Origin only, same host", allow: true, path: "/lb/drain", header: map[string]string{"Origin": "http://lb.example"}, body: good, status: 200, wantCall: "api.example.com http://127.0.0.1:9001 true"},
		{name: "read-only", path: "/lb/drain", header: sameOrigin, body: good, status: 403, wantErrMsg: "allow_drain"},
		{name: "cross-site", allow: true, path: "/lb/drain", header: map[string]string{"Sec-Fetch-Site": "cross-site", "Origin": "http://evil.example"}, body: good, status: 403, wantErrMsg: "cross-origin"},
		{name: "same-site", allow: true, path: "/lb/drain", header: map[string]string{"Sec-Fetch-Site": "same-site", "Origin": "http://x.lb.example"}, body: good, status: 403, wantErrMsg: "cross-origin"},
		{name: "foreign Origin, no Sec-Fetch-Site", allow: true, path: "/lb/undrain", header: map[string]string{"Origin": "http://evil.example"}, body: good, status: 403, wantErrMsg: "cross-origin"},
		{name: "form post", allow: true, path: "/lb/drain", header: map[string]string{"Sec-Fetch-Site": "same-origin", "Content-Type": "application/x-www-form-urlencoded"}, body: "url=x", status: 415},
		{name: "bad JSON", allow: true, path: "/lb/drain", header: sameOrigin, body: `{"url":`, status: 400},
		{name: "unknown field", allow: true, path: "/lb/drain", header: sameOrigin, body: `{"url":"http://a","weight":0}`, status: 400},
		{name: "no url", allow: true, path: "/lb/drain", header: sameOrigin, body: `{"host":"a"}`, status: 400, wantErrMsg: `"url" is missing`},
		{name: "body too large", allow: true, path: "/lb/drain", header: sameOrigin, body: `{"url":"` + strings.Repeat("a", maxDrainBody) + `"}`, status: 400},
		{name: "unknown instance", allow: true, unknown: true, path: "/lb/drain", header: sameOrigin, body: good, status: 404, wantCall: "api.example.com http://127.0.0.1:9001 true", wantErrMsg: "no such instance"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := &fakeSource{unknown: tt.unknown}
			fake.register(t)
			r := httptest.NewRequest("POST", "http://lb.example"+tt.path, strings.NewReader(tt.body))
			r.Header.Set("Content-Type", "application/json")
			for k, v := range tt.header {
				r.Header.Set(k, v)
			}
			w := serve(t, &Handler{AllowDrain: tt.allow}, r)
			if w.Code != tt.status {
				t.Fatalf("status %d, want %d; body %s", w.Code, tt.status, w.Body)
			}
			if got := strings.Join(fake.calls, "; "); got != tt.wantCall {
				t.Errorf("drainer calls %q, want %q", got, tt.wantCall)
			}
			var resp map[string]any
			if err := json.Unmarshal(w.Body.Bytes(), &resp); err != nil {
				t.Fatalf("body %q: %v", w.Body, err)
			}
			if tt.status != 200 {
				msg, _ := resp["error"].(string)
				if msg == "" || !strings.Contains(msg, tt.wantErrMsg) {
					t.Errorf("error %q, want one with %q", msg, tt.wantErrMsg)
				}
			} else if resp["draining"] != strings.HasSuffix(tt.wantCall, "true") {
				t.Errorf("response %v, want draining %v", resp, strings.HasSuffix(tt.wantCall, "true"))
			}
		})
	}
}

func TestReportDrainAvailable(t *testing.T) {
	(&fakeSource{}).register(t)
	for _, allow := range []bool{false, true} {
		t.Run(fmt.Sprintf("allow_drain %v", allow), func(t *testing.T) {
			w := serve(t, &Handler{AllowDrain: allow}, httptest.NewRequest("GET", "/lb/report.json", nil))
			if w.Code != 200 {
				t.Fatalf("status %d: %s", w.Code, w.Body)
			}
			var rep struct {
				Apps           []report.App `json:"apps"`
				DrainAvailable *bool        `json:"drain_available"`
			}
			if err := json.Unmarshal(w.Body.Bytes(), &rep); err != nil {
				t.Fatal(err)
			}
			if len(rep.Apps) != 1 {
				t.Errorf("report %s does not have the load balancer's app", w.Body)
			}
			if got := rep.DrainAvailable != nil && *rep.DrainAvailable; got != allow {
				t.Errorf("drain_available %v, want %v (body %s)", got, allow, w.Body)
			}
			if rep.DrainAvailable != nil && !*rep.DrainAvailable {
				t.Errorf("drain_available false is written out; want it omitted: %s", w.Body)
			}
		})
	}
}

func TestUnmarshalCaddyfile(t *testing.T) {
	tests := []struct {
		input   string
		want    string // JSON of the handler
		wantErr string
	}{
		{input: `load_balancer_dashboard`, want: `{}`},
		{input: `load_balancer_dashboard {
		}`, want: `{}`},
		{input: `load_balancer_dashboard {
			allow_drain
		}`, want: `{"allow_drain":true}`},
		{input: `load_balancer_dashboard /lb`, wantErr: `takes no arguments, got "/lb"`},
		{input: `load_balancer_dashboard {
			allow_drain yes
		}`, wantErr: `allow_drain takes no arguments, got "yes", at Testfile:2`},
		{input: `load_balancer_dashboard {
			read_only
		}`, wantErr: `unrecognized option "read_only" of load_balancer_dashboard; it has: allow_drain, at Testfile:2`},
	}
	for _, tt := range tests {
		t.Run(tt.input, func(t *testing.T) {
			var h Handler
			err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.input))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one with %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got, err := json.Marshal(&h)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, []byte(tt.want)) {
				t.Errorf("JSON %s, want %s", got, tt.want)
			}
		})
	}
}
