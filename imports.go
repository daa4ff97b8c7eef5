package caddylb

// The modules that come with the load balancer, so that building Caddy with
// this module (xcaddy --with github.com/golb/caddy-lb) brings them too.
import (
	_ "github.com/golb/caddy-lb/dashboard"
	_ "github.com/golb/caddy-lb/discovery/etcd"
)
