package caddylb

import (
	"net/http"
	"strings"

	"github.com/golb/caddy-lb/backend"
)

// InstanceStatesOf counts the instance states kept for the loaded configs
// whose instance URL is one of urls, and the health monitors among them
// that are probing, for tests to check that none leaks.
func InstanceStatesOf(urls ...string) (states, monitors int) {
	instanceStates.Range(func(_, v any) bool {
		s := v.(*sharedInstance)
		for _, u := range urls {
			if strings.Contains(s.key, "\x00"+u+"\x00") || strings.Contains(s.key, "\x00"+u+"/") {
				states++
				if s.monitor != nil && s.monitor.Running() {
					monitors++
				}
				break
			}
		}
		return true
	})
	return states, monitors
}

// Next is App.next for tests: the instance that r's first attempt gets,
// acquired, after waiting in the queue as a request would. Release it
// with Done.
func (a *App) Next(w http.ResponseWriter, r *http.Request) (*backend.Instance, error) {
	_, in, _, _, err := a.next(w, r, nil)
	return in, err
}

// Done releases an instance that Next acquired.
func (a *App) Done(in *backend.Instance) { a.done(in) }

// Queued is the number of requests in the app's queue.
func (a *App) Queued() int { return a.queued() }
