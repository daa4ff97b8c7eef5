package report

import (
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"

	"github.com/caddyserver/caddy/v2"
)

// ErrUnknownInstance is what Drain returns, wrapped, when the running
// config has no such app or instance.
var ErrUnknownInstance = errors.New("no such instance")

// Drain drains (drain true) or undrains the instance url of the app that
// serves host, in every load balancer of the running config that has it.
// host and url name the instance as the report does (App.Host and
// Instance.URL); a source may also take url as configured. It returns an
// error wrapping ErrUnknownInstance when no app or instance matches.
func Drain(host, url string, drain bool) error {
	apps, instances := 0, 0
	for _, src := range Running() {
		a, i := src.Drain(host, url, drain)
		apps += a
		instances += i
	}
	switch {
	case apps == 0:
		return fmt.Errorf("%w: no app serves host %q", ErrUnknownInstance, host)
	case instances == 0:
		return fmt.Errorf("%w: app %q has no instance %q", ErrUnknownInstance, host, url)
	}
	return nil
}

// Paths of the drain and undrain routes on Caddy's admin endpoint.
const (
	DrainPath   = "/api/v1/loadBalancers/instances/drain"
	UndrainPath = "/api/v1/loadBalancers/instances/undrain"
)

// MaxDrainBody bounds the body of a drain or undrain request.
const MaxDrainBody = 64 << 10

// DrainRequest is the body of a drain or undrain request: the instance as
// the report names it.
type DrainRequest struct {
	Host string `json:"host"`
	URL  string `json:"url"`
}

// DecodeDrainRequest reads the JSON body of a drain or undrain request.
// It returns the status to answer with when the request is bad (400, or
// 415 for a body that is not JSON), with an error saying why.
func DecodeDrainRequest(w http.ResponseWriter, r *http.Request) (DrainRequest, int, error) {
	var req DrainRequest
	// A JSON body also keeps HTML forms out: a cross-origin page cannot
	// send it without a CORS preflight.
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
		return req, http.StatusUnsupportedMediaType,
			errors.New(`want a JSON body {"host": ..., "url": ...} with Content-Type application/json`)
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxDrainBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return req, http.StatusBadRequest, fmt.Errorf("bad request body: %v", err)
	}
	if req.URL == "" {
		return req, http.StatusBadRequest, errors.New(`bad request body: "url" is missing`)
	}
	return req, 0, nil
}

// serveDrain is the admin handler of DrainPath (drain true) and
// UndrainPath.
func serveDrain(drain bool) caddy.AdminHandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed,
				Err: fmt.Errorf("method %s not allowed: drain and undrain take POST", r.Method)}
		}
		req, status, err := DecodeDrainRequest(w, r)
		if err != nil {
			return caddy.APIError{HTTPStatus: status, Err: err}
		}
		if err := Drain(req.Host, req.URL, drain); err != nil {
			return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: err}
		}
		body, err := json.Marshal(struct {
			Host     string `json:"host"`
			URL      string `json:"url"`
			Draining bool   `json:"draining"`
		}{req.Host, req.URL, drain})
		if err != nil {
			return err
		}
		w.Header().Set("Content-Type", "application/json")
		_, err = w.Write(append(body, '\n'))
		return err
	}
}
