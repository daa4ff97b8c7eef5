package caddylb

import (
	"errors"

	"github.com/golb/caddy-lb/strategy"
)

// Sentinel errors. Config errors wrap them with the app and the field at
// fault, so they can be checked with errors.Is and still read well.
var (
	// ErrNoApps: a load_balancer handler with no apps.
	ErrNoApps = errors.New("no apps configured")
	// ErrInvalidHost: an app host that is not a host name, a one-label
	// wildcard (*.example.com) or the catch-all (*).
	ErrInvalidHost = errors.New("invalid host")
	// ErrDuplicateHost: two apps of one handler with the same host.
	ErrDuplicateHost = errors.New("duplicate app host")
	// ErrNoInstances: an app with no instances.
	ErrNoInstances = errors.New("no instances")
	// ErrInvalidURL: an instance URL that does not parse.
	ErrInvalidURL = errors.New("invalid URL")
	// ErrInvalidScheme: an instance URL whose scheme is not http, https or
	// h2c.
	ErrInvalidScheme = errors.New("scheme must be http, https or h2c")
	// ErrMissingHost: an instance URL with no host.
	ErrMissingHost = errors.New("URL has no host")
	// ErrUnknownStrategy: a strategy name no strategy is registered under.
	ErrUnknownStrategy = strategy.ErrUnknown
	// ErrInvalidDuration: a zero or negative duration.
	ErrInvalidDuration = errors.New("duration must be positive")
	// ErrInvalidHealthURI: a health_uri that is not a path starting with '/'.
	ErrInvalidHealthURI = errors.New("health_uri must be a path starting with '/'")
	// ErrInvalidWeight: an instance weight below 0 or above
	// backend.MaxWeight.
	ErrInvalidWeight = errors.New("invalid weight")
	// ErrInvalidPriority: an instance priority below 0 or above
	// MaxPriority.
	ErrInvalidPriority = errors.New("invalid priority")
	// ErrInvalidOption: an option value out of its range (hash_balance).
	ErrInvalidOption = strategy.ErrInvalidOption
	// ErrDuplicateInstance: an instance URL given twice in one app.
	ErrDuplicateInstance = errors.New("duplicate instance")
	// ErrInvalidPort: a health_port out of 1 to 65535.
	ErrInvalidPort = errors.New("invalid port")
	// ErrInvalidStatus: a status that is neither a code from 100 to 599
	// nor a class such as 5xx.
	ErrInvalidStatus = errors.New("invalid status")
	// ErrInvalidMethod: a health_method that is not an HTTP method token.
	ErrInvalidMethod = errors.New("invalid method")
	// ErrInvalidHeader: a health_headers name or value HTTP cannot carry.
	ErrInvalidHeader = errors.New("invalid header")
	// ErrInvalidRegexp: a health_body that does not compile.
	ErrInvalidRegexp = errors.New("invalid regular expression")
	// ErrInvalidCount: a count (health_passes, max_fails, retries, ...)
	// out of its range.
	ErrInvalidCount = errors.New("invalid count")
	// ErrInvalidPercent: a percentage out of 0 to 100.
	ErrInvalidPercent = errors.New("invalid percentage")
	// ErrNegativeDuration: a negative duration where 0 means off.
	ErrNegativeDuration = errors.New("duration must not be negative")
	// ErrInvalidHashKey: a hash_key that is none of client_ip,
	// header:NAME, cookie:NAME, query:NAME and uri.
	ErrInvalidHashKey = strategy.ErrInvalidHashKey
	// ErrInvalidCookieName: a sticky_cookie that is not a cookie name.
	ErrInvalidCookieName = errors.New("invalid cookie name")
	// ErrInapplicableOption: an option that would do nothing with the
	// app's other settings, such as hash_key without strategy hash.
	ErrInapplicableOption = strategy.ErrInapplicableOption

	// ErrUnknownPool: a split or mirror names no pool of the handler.
	ErrUnknownPool = errors.New("unknown pool")
	// ErrDuplicatePool: two pools of one name, or one pool twice in a
	// split.
	ErrDuplicatePool = errors.New("duplicate pool")
	// ErrInvalidPoolName: a pool name with spaces, quotes or braces.
	ErrInvalidPoolName = errors.New("invalid pool name")
	// ErrInvalidSplit: a split or mirror that cannot be served, such as a
	// pool that splits again.
	ErrInvalidSplit = errors.New("invalid split")

	// ErrNoApp: no app matches the request's host (HTTP 404).
	ErrNoApp = errors.New("no app for host")
	// ErrNoHealthyInstances: every instance of the app is down (HTTP 503).
	ErrNoHealthyInstances = errors.New("no healthy instances")
)
