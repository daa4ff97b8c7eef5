package report

import (
	"errors"
	"sync/atomic"
)

// DrainFunc takes an instance out of rotation (drain true) or puts it back
// (drain false) at runtime, without a config reload. host and url name the
// instance as the report does: App.Host and Instance.URL. It returns an
// error wrapping ErrUnknownInstance when no app or instance matches.
type DrainFunc func(host, url string, drain bool) error

// ErrNoDrainer is returned by Drain when no DrainFunc is registered.
var ErrNoDrainer = errors.New("draining instances is not available")

// ErrUnknownInstance is what a DrainFunc wraps when the running config has
// no such app or instance.
var ErrUnknownInstance = errors.New("no such instance")

// drainer is the registered DrainFunc, if any. Process-wide, like drain
// state has to be: it must outlive config reloads.
var drainer atomic.Pointer[DrainFunc]

// SetDrainer registers f as the process's way to drain instances, or
// removes it with nil, and returns the DrainFunc it replaces (nil if none).
// The load balancer calls it once, from its package's init; tests may swap
// it and put the previous one back.
func SetDrainer(f DrainFunc) (previous DrainFunc) {
	var p *DrainFunc
	if f != nil {
		p = &f
	}
	if old := drainer.Swap(p); old != nil {
		return *old
	}
	return nil
}

// DrainAvailable reports whether a DrainFunc is registered.
func DrainAvailable() bool { return drainer.Load() != nil }

// Drain drains (drain true) or undrains the instance url of the app that
// serves host with the registered DrainFunc, or returns ErrNoDrainer.
func Drain(host, url string, drain bool) error {
	f := drainer.Load()
	if f == nil {
		return ErrNoDrainer
	}
	return (*f)(host, url, drain)
}
