// Package dashboard is the load_balancer_dashboard HTTP handler: a live web
// page of every load balancer in the running Caddy config, mounted on a
// path of any site, usually behind basic_auth:
//
//	handle /lb/* {
//	    basic_auth { admin <bcrypt hash> }
//	    load_balancer_dashboard
//	}
//
// It cannot live on Caddy's admin endpoint: the admin API refuses browser
// navigations that carry Sec-Fetch-Mode without an Origin, so a browser
// gets 403 there.
//
// Under its mount path the handler serves, by the last segment of the
// request path:
//
//   - report.json: GET, the report (package report) as JSON;
//   - drain, undrain: POST {"host": ..., "url": ...}, to take an instance
//     out of rotation or put it back, with the allow_drain option only;
//   - anything else: GET, the page, one self-contained HTML document
//     (inline CSS and JS, no external assets) that polls report.json every
//     2 s. A path that does not end in "/" is redirected to the same path
//     with a "/" appended, so that the page's relative URLs stay under the
//     mount path: /lb → /lb/.
//
// Every URL the page uses is relative to its own, so it works under any
// mount path, under handle_path and behind a proxy that strips a prefix.
package dashboard

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/golb/caddy-lb/report"
)

// The names the handler answers to under its mount path, besides the page.
const (
	ReportName  = "report.json"
	DrainName   = "drain"
	UndrainName = "undrain"
)

// maxDrainBody bounds the body of a drain or undrain request.
const maxDrainBody = report.MaxDrainBody

func init() {
	caddy.RegisterModule(new(Handler))
}

// Handler is the load_balancer_dashboard HTTP handler. It answers every
// request it gets and never calls the next handler.
type Handler struct {
	// Shows drain and undrain buttons on the page and accepts drain and
	// undrain requests. Off by default: the dashboard is read-only.
	AllowDrain bool `json:"allow_drain,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (*Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.load_balancer_dashboard",
		New: func() caddy.Module { return new(Handler) },
	}
}

// ServeHTTP serves the page, the report or a drain request, by the last
// segment of the request's path.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	switch lastSegment(r.URL.Path) {
	case ReportName:
		serveReport(w, r, h.AllowDrain)
	case DrainName:
		h.serveDrain(w, r, true)
	case UndrainName:
		h.serveDrain(w, r, false)
	default:
		servePage(w, r)
	}
	return nil
}

// lastSegment returns what follows the last "/" of p.
func lastSegment(p string) string { return p[strings.LastIndexByte(p, '/')+1:] }

// page is the dashboard, and csp the Content-Security-Policy it is served
// with: nothing but its own inline style and script, and requests to its
// own origin.
var (
	//go:embed page.html
	page []byte
	csp  = pagePolicy(page)
)

// pagePolicy returns the Content-Security-Policy for page, which has one
// inline <style> and one inline <script>, allowed by their hashes.
func pagePolicy(page []byte) string {
	hash := func(open, close string) string {
		_, rest, ok := bytes.Cut(page, []byte(open))
		body, _, ok2 := bytes.Cut(rest, []byte(close))
		if !ok || !ok2 {
			panic("dashboard: page.html has no " + open + " element")
		}
		sum := sha256.Sum256(body)
		return "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
	}
	return "default-src 'none'; style-src " + hash("<style>", "</style>") +
		"; script-src " + hash("<script>", "</script>") +
		"; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
}

// servePage serves the page for GET and HEAD.
func servePage(w http.ResponseWriter, r *http.Request) {
	if !allowMethods(w, r, http.MethodGet, http.MethodHead) {
		return
	}
	// The page's relative URLs resolve against the URL the browser asked
	// for, which is the request's path before any rewrite (handle_path
	// strips the mount path).
	browserPath := r.URL.Path
	if orig, ok := r.Context().Value(caddyhttp.OriginalRequestCtxKey).(http.Request); ok && orig.URL != nil {
		browserPath = orig.URL.EscapedPath()
	}
	if !strings.HasSuffix(browserPath, "/") {
		// Relative, so that it is right whatever was stripped; "./" so
		// that a segment with a colon is not taken for a scheme.
		w.Header().Set("Location", "./"+lastSegment(browserPath)+"/")
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusFound)
		return
	}
	hdr := w.Header()
	hdr.Set("Content-Type", "text/html; charset=utf-8")
	hdr.Set("Content-Security-Policy", csp)
	hdr.Set("Cache-Control", "no-store")
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("X-Frame-Options", "DENY")
	hdr.Set("Referrer-Policy", "same-origin")
	_, _ = w.Write(page)
}

// serveReport serves the running config's report for GET and HEAD.
func serveReport(w http.ResponseWriter, r *http.Request, allowDrain bool) {
	if !allowMethods(w, r, http.MethodGet, http.MethodHead) {
		return
	}
	rep := report.Current()
	rep.DrainAvailable = allowDrain
	writeJSON(w, http.StatusOK, rep)
}

// csrf refuses cross-origin browser requests: those whose Sec-Fetch-Site
// is not same-origin, or, from browsers that don't send it, whose Origin is
// not the request's Host. Requests with neither header do not come from a
// browser and pass.
var csrf = http.NewCrossOriginProtection()

// serveDrain drains (drain true) or undrains an instance, for POST.
func (h *Handler) serveDrain(w http.ResponseWriter, r *http.Request, drain bool) {
	if !allowMethods(w, r, http.MethodPost) {
		return
	}
	if err := csrf.Check(r); err != nil {
		writeError(w, http.StatusForbidden, "cross-origin request refused")
		return
	}
	if !h.AllowDrain {
		writeError(w, http.StatusForbidden, "the dashboard is read-only: set allow_drain to drain instances from it")
		return
	}
	req, status, err := report.DecodeDrainRequest(w, r)
	if err != nil {
		writeError(w, status, err.Error())
		return
	}
	if err := report.Drain(req.Host, req.URL, drain); err != nil {
		writeError(w, http.StatusNotFound, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, struct {
		Host     string `json:"host"`
		URL      string `json:"url"`
		Draining bool   `json:"draining"`
	}{req.Host, req.URL, drain})
}

// allowMethods answers 405 and returns false if r's method is not one of
// methods.
func allowMethods(w http.ResponseWriter, r *http.Request, methods ...string) bool {
	for _, m := range methods {
		if r.Method == m {
			return true
		}
	}
	w.Header().Set("Allow", strings.Join(methods, ", "))
	writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s not allowed here", r.Method))
	return false
}

// writeJSON writes v as the JSON response, never cached.
func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		status, body = http.StatusInternalServerError, []byte(`{"error":"encoding the response failed"}`)
	}
	hdr := w.Header()
	hdr.Set("Content-Type", "application/json")
	hdr.Set("Cache-Control", "no-store")
	hdr.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}

// writeError writes {"error": msg}, which the page shows.
func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

// Interface guards
var (
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ caddyfile.Unmarshaler       = (*Handler)(nil)
)
