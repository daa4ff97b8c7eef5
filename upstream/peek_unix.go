//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package upstream

import (
	"net"
	"syscall"
)

// initPeek prepares the liveness check of c: a non-blocking MSG_PEEK of one
// byte on the socket under nc, which tells a live idle connection (nothing
// to read) from one the backend closed (EOF), reset (an error), or sent
// unsolicited bytes on. The callback is made once per connection so that
// the check allocates nothing.
func (c *conn) initPeek(nc net.Conn) {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return
	}
	c.raw = raw
	c.peekFn = func(fd uintptr) bool {
		for range 8 { // bounded EINTR retries
			n, _, err := syscall.Recvfrom(int(fd), c.peekBuf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			switch {
			case err == syscall.EINTR:
				continue
			case err == syscall.EAGAIN || err == syscall.EWOULDBLOCK:
				c.peekRes = peekNothing
			case err != nil || n == 0:
				c.peekRes = peekDead
			default:
				c.peekRes = peekData
			}
			break
		}
		return true
	}
}
