package backend

import "net/url"

// ExpNeg exposes expNeg to tests.
var ExpNeg = expNeg

// NewWeighted returns a healthy instance of the given weight for the
// backend at u, with passive checks and slow start off.
func NewWeighted(u *url.URL, weight int) *Instance {
	return New(u, weight, &Policy{}, Now())
}
