//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package upstream

import "net"

// initPeek does nothing here: without a liveness check, a stale idle
// connection is found when the request on it fails, and the request is
// replayed if it can be.
func (c *conn) initPeek(net.Conn) {}
