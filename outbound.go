package caddylb

import (
	"errors"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"golang.org/x/net/http/httpguts"

	"github.com/golb/caddy-lb/upstream"
)

// Values shared, read-only, by outbound requests and responses.
var (
	teTrailers     = []string{"trailers"}
	connUpgrade    = []string{"Upgrade"}
	noUserAgent    = []string{""} // net/http adds none for an empty one
	protoHTTP      = []string{"http"}
	protoHTTPS     = []string{"https"}
	viaResponseSet = []string{viaValue}
)

// errBadUpgrade fails a request that asks to switch to a protocol named
// with characters a header cannot carry.
var errBadUpgrade = errors.New("the client asked to switch to an invalid protocol")

// outbound builds at.out, the request sent to the instance of t, from the
// client's request r:
//
//   - the method, the client's Host, its body and trailers (the same map,
//     which the server fills in as the body ends), and its context with
//     the attempt as the upstream.Interim that relays 1xx responses;
//   - the URL: the instance's scheme and address, its base path joined
//     with the request's path, and the query exactly as the client sent it
//     (after the instance's own, if it has one);
//   - the headers, which share the client's values: without the hop-by-hop
//     ones (RFC 9110, 7.6.1: Connection and every header it names,
//     Keep-Alive, Proxy-Connection, Proxy-Authenticate,
//     Proxy-Authorization, TE but "trailers", Trailer, Transfer-Encoding,
//     Upgrade unless the client asks to switch protocols), without
//     Forwarded, with X-Forwarded-For, -Proto and -Host (see forwarded)
//     and Via, with the instance URL's userinfo as basic auth unless the
//     client sent an Authorization, and with no User-Agent added.
func (at *attempt) outbound(t *target, r *http.Request) error {
	in := r.Header
	conn := in["Connection"]
	if httpguts.HeaderValuesContainsToken(conn, "Upgrade") {
		if at.upgrade = in.Get("Upgrade"); at.upgrade != "" && !printable(at.upgrade) {
			return errBadUpgrade
		}
	}
	h := make(http.Header, len(in)+4)
	for k, vs := range in {
		switch k {
		case "Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate", "Proxy-Authorization",
			"Te", "Trailer", "Transfer-Encoding", "Upgrade",
			"Forwarded", "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "Via":
			continue
		}
		if len(conn) > 0 && listed(conn, k) {
			continue
		}
		h[k] = vs
	}
	if httpguts.HeaderValuesContainsToken(in["Te"], "trailers") {
		h["Te"] = teTrailers
	}
	if at.upgrade != "" {
		h["Connection"] = connUpgrade
		at.values[3] = at.upgrade
		h["Upgrade"] = at.values[3:4:4]
	}
	if _, ok := h["User-Agent"]; !ok {
		h["User-Agent"] = noUserAgent
	}
	if t.auth != nil && len(in["Authorization"]) == 0 {
		h["Authorization"] = t.auth
	}
	at.forwarded(h, r)
	at.values[2] = via(r)
	if prior := in["Via"]; len(prior) > 0 {
		h["Via"] = append(prior[:len(prior):len(prior)], at.values[2])
	} else {
		h["Via"] = at.values[2:3:3]
	}

	base := t.url
	at.url = url.URL{Scheme: base.Scheme, Host: base.Host, RawQuery: r.URL.RawQuery}
	if base.Scheme == "h2c" {
		at.url.Scheme = "http" // over the instance's h2c transport
	}
	at.url.Path, at.url.RawPath = joinURLPath(base, r.URL)
	switch {
	case base.RawQuery == "":
	case r.URL.RawQuery == "":
		at.url.RawQuery = base.RawQuery
	default:
		at.url.RawQuery = base.RawQuery + "&" + r.URL.RawQuery
	}

	ctx := upstream.WithInterim(r.Context(), at)
	at.out = *r.WithContext(ctx)
	out := &at.out
	out.URL = &at.url
	out.Header = h
	out.RequestURI = ""
	out.Close = false
	if r.ContentLength == 0 {
		out.Body = nil // the server's http.NoBody: nothing to send
	}
	out.GetBody = nil
	if v, ok := out.Body.(*bodyView); ok && t.h2c != nil {
		out.GetBody = v.again
	}
	return nil
}

// forwarded sets X-Forwarded-For, -Proto and -Host in h, the outbound
// headers of r. Values the client sent are kept (and X-Forwarded-For
// extended) only when Caddy counts the client as a trusted proxy (the
// server's trusted_proxies); otherwise they are replaced, so a client
// cannot spoof its address to the backend.
func (at *attempt) forwarded(h http.Header, r *http.Request) {
	clientIP, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		clientIP = r.RemoteAddr
	}
	proto := protoHTTP
	if r.TLS != nil {
		proto = protoHTTPS
	}
	at.values[0], at.values[1] = clientIP, r.Host
	h["X-Forwarded-For"], h["X-Forwarded-Proto"], h["X-Forwarded-Host"] = at.values[0:1:1], proto, at.values[1:2:2]
	if trusted, _ := caddyhttp.GetVar(r.Context(), caddyhttp.TrustedProxyVarKey).(bool); !trusted {
		return
	}
	if prior := r.Header.Values("X-Forwarded-For"); len(prior) > 0 {
		at.values[0] = strings.Join(prior, ", ") + ", " + clientIP
	}
	if v := r.Header.Get("X-Forwarded-Proto"); v != "" {
		h["X-Forwarded-Proto"] = []string{v}
	}
	if v := r.Header.Get("X-Forwarded-Host"); v != "" {
		at.values[1] = v
	}
}

// listed reports whether the header k is named in the Connection header
// values conn, and so concerns one connection only.
func listed(conn []string, k string) bool {
	for _, v := range conn {
		for v != "" {
			var name string
			name, v, _ = strings.Cut(v, ",")
			if strings.EqualFold(strings.Trim(name, " \t"), k) {
				return true
			}
		}
	}
	return false
}

// removeHopByHop deletes from a response's headers h those that concern
// one connection only; keepUpgrade keeps Connection and Upgrade, for a
// protocol switch.
func removeHopByHop(h http.Header, keepUpgrade bool) {
	if conn := h["Connection"]; len(conn) > 0 {
		for k := range h {
			if listed(conn, k) && !(keepUpgrade && k == "Upgrade") {
				delete(h, k)
			}
		}
	}
	for _, k := range [...]string{"Keep-Alive", "Proxy-Connection", "Proxy-Authenticate", "Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding"} {
		delete(h, k)
	}
	if !keepUpgrade {
		delete(h, "Connection")
		delete(h, "Upgrade")
	}
}

// printable reports whether s holds only printable ASCII.
func printable(s string) bool {
	for i := range len(s) {
		if s[i] < ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// joinURLPath joins the instance's base path and the request's path, in
// both their decoded and escaped forms, with exactly one slash between
// them.
func joinURLPath(base, req *url.URL) (path, rawPath string) {
	if base.RawPath == "" && req.RawPath == "" {
		return joinPath(base.Path, req.Path), ""
	}
	return joinPath(base.Path, req.Path), joinPath(base.EscapedPath(), req.EscapedPath())
}

// joinPath joins an instance's base path and a request or health path with
// exactly one slash between them.
func joinPath(base, p string) string {
	switch {
	case base == "" || base == "/":
		return p
	case strings.HasSuffix(base, "/") && strings.HasPrefix(p, "/"):
		return base + p[1:]
	case !strings.HasSuffix(base, "/") && !strings.HasPrefix(p, "/"):
		return base + "/" + p
	}
	return base + p
}

// viaValue is what the load balancer adds to the Via header of responses
// (RFC 9110, 7.6.3): the protocol it received them with, HTTP/1.1 for
// every instance today, and its name, as reverse_proxy does.
const viaValue = "1.1 Caddy"

// via returns what the load balancer adds to the Via header of a request it
// received as r.
func via(r *http.Request) string {
	switch {
	case r.ProtoMajor == 1 && r.ProtoMinor == 1:
		return "1.1 Caddy"
	case r.ProtoMajor == 2:
		return "2.0 Caddy"
	case r.ProtoMajor == 3:
		return "3.0 Caddy"
	case r.ProtoMajor == 1 && r.ProtoMinor == 0:
		return "1.0 Caddy"
	}
	return strconv.Itoa(r.ProtoMajor) + "." + strconv.Itoa(r.ProtoMinor) + " Caddy"
}
