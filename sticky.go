package caddylb

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"net/http"

	"github.com/golb/caddy-lb/backend"
	"github.com/golb/caddy-lb/internal/cookie"
)

// Stickiness holds the options of sticky sessions.
type Stickiness struct {
	// The name of a cookie that pins each client to an instance, with any
	// strategy: a request whose cookie names an available instance goes
	// to it; any other is balanced by the strategy, and its response sets
	// the cookie (HttpOnly, SameSite=Lax, Secure over TLS; no expiry) to
	// the instance picked. The value is a MAC of the instance's URL, not
	// the URL.
	StickyCookie string `json:"sticky_cookie,omitempty"`

	// A secret mixed into the MAC key of the sticky cookie's values, so
	// that nobody without it can compute the value of an instance. Every
	// load balancer of a fleet needs the same. Optional; only with
	// sticky_cookie.
	StickyCookieSecret string `json:"sticky_cookie_secret,omitempty"`
}

// check checks the options.
func (s *Stickiness) check() error {
	if s.StickyCookie != "" && !validCookieName(s.StickyCookie) {
		return optionError("sticky_cookie", fmt.Errorf("%w %q", ErrInvalidCookieName, s.StickyCookie))
	}
	if s.StickyCookieSecret != "" && s.StickyCookie == "" {
		return optionError("sticky_cookie_secret", fmt.Errorf("%w: it signs the sticky_cookie, which is not set", ErrInapplicableOption))
	}
	return nil
}

// stickyCookie pins a client to the instance that served it, on top of any
// strategy: a request whose cookie names an available instance goes there;
// any other is balanced by the strategy, and the answer sets the cookie to
// the instance picked.
//
// The cookie's value is a MAC of the instance's URL (HMAC-SHA-256,
// truncated to 96 bits, base64url), so it says nothing about the instance
// to the client. The MAC key is derived from sticky_cookie_secret, the
// app's host and the cookie's name: every load balancer with the same
// config, the same secret included, sets and honours the same values, with
// nothing shared at run time. Without a secret the key follows from the
// config alone; someone who knows the host, the cookie name and an
// instance's URL could then compute that instance's value, and so choose
// an (available) instance or confirm a guess of its URL. A secret rules
// that out.
type stickyCookie struct {
	name string
	key  []byte // of the MAC
}

// newStickyCookie returns the sticky cookie name of app, whose values are
// signed with secret.
func newStickyCookie(name, secret, app string) *stickyCookie {
	h := sha256.New()
	for _, part := range []string{"caddy-lb sticky_cookie v1", secret, app, name} {
		h.Write([]byte(part))
		h.Write([]byte{0})
	}
	return &stickyCookie{name: name, key: h.Sum(nil)}
}

// value returns the cookie value that names in.
func (sc *stickyCookie) value(in *backend.Instance) string {
	mac := hmac.New(sha256.New, sc.key)
	mac.Write([]byte(in.URL().String()))
	return base64.RawURLEncoding.EncodeToString(mac.Sum(nil)[:12])
}

// setCookie returns the Set-Cookie header values for the instance whose
// cookie value is value: one for plain HTTP, one (Secure) for TLS.
func (sc *stickyCookie) setCookie(value string) (plain, secure string) {
	plain = fmt.Sprintf("%s=%s; Path=/; HttpOnly; SameSite=Lax", sc.name, value)
	return plain, plain + "; Secure"
}

// pinned returns the instance r's cookie names among m's, if it is
// available, or nil. It allocates nothing.
func (sc *stickyCookie) pinned(r *http.Request, m *members) *backend.Instance {
	v := cookie.Value(r.Header["Cookie"], sc.name)
	if v == "" {
		return nil
	}
	if in := m.pinned[v]; in != nil && in.Available() {
		return in
	}
	return nil
}

// validCookieName reports whether name may name a cookie.
func validCookieName(name string) bool {
	return (&http.Cookie{Name: name, Value: "x"}).Valid() == nil
}
