package caddylb

import (
	"encoding/json"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// Duration is a Caddy duration: it decodes from a string such as "10s",
// "1m30s" or "1d", or from an integer number of nanoseconds. Unlike
// caddy.Duration it encodes back to a string, so `caddy adapt` output reads
// like the config a person wrote.
type Duration time.Duration

// UnmarshalJSON implements json.Unmarshaler the way caddy.Duration does.
func (d *Duration) UnmarshalJSON(b []byte) error {
	return (*caddy.Duration)(d).UnmarshalJSON(b)
}

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// durationOr returns *d, or def when d is unset.
func durationOr(d *Duration, def time.Duration) time.Duration {
	if d == nil {
		return def
	}
	return time.Duration(*d)
}
