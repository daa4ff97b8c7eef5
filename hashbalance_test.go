package caddylb_test

import (
	"fmt"
	"io"
	"math"
	"net/http"
	"testing"
)

// TestHashBalanceHotKey: requests with one hash key, held at their
// backends so that the number in flight is known at every step: with
// hash_balance 1.25 the k-th request (k−1 in flight before it) goes to an
// instance that then has at most ceil(1.25 × k / 3) in flight; without it
// every request goes to one backend.
func TestHashBalanceHotKey(t *testing.T) {
	gate := newGate()
	defer gate.open()
	arrivals := make(chan string, 64)
	var urls []any
	for i := range 3 {
		b := newBackend(t, fmt.Sprintf("b%d", i))
		b.handle(func(w http.ResponseWriter, r *http.Request) {
			arrivals <- b.name
			if err := gate.wait(r.Context()); err != nil {
				return
			}
			_, _ = io.WriteString(w, b.name)
		})
		urls = append(urls, b.URL)
	}
	s := newSite(t)
	s.load(fmt.Sprintf(`
http://:{port} {
	load_balancer {
		app bounded.test {
			instances %[1]s %[2]s %[3]s
			strategy hash
			hash_key header:X-Key
			hash_balance 1.25
		}
		app plain.test {
			instances %[1]s %[2]s %[3]s
			strategy hash
			hash_key header:X-Key
		}
	}
}`, urls...))

	const requests = 24
	send := func(host string) <-chan answer {
		ch := make(chan answer, 1)
		go func() {
			req, err := http.NewRequest(http.MethodGet, s.url("/"), nil)
			if err != nil {
				ch <- answer{err: err}
				return
			}
			req.Host = host
			req.Header.Set("X-Key", "hot")
			resp, err := client.Do(req)
			if err != nil {
				ch <- answer{err: err}
				return
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			ch <- answer{status: resp.StatusCode, body: string(body), err: err}
		}()
		return ch
	}
	// hold sends the requests one at a time, each once the one before is
	// held at its backend, and returns how many each backend holds.
	hold := func(host string, check func(k int, name string, held map[string]int)) (map[string]int, []<-chan answer) {
		held := map[string]int{}
		var answers []<-chan answer
		for k := 1; k <= requests; k++ {
			answers = append(answers, send(host))
			name := recv(t, arrivals, fmt.Sprintf("request %d of %s at a backend", k, host))
			held[name]++
			check(k, name, held)
		}
		return held, answers
	}

	held, bounded := hold("bounded.test", func(k int, name string, held map[string]int) {
		if bound := int(math.Ceil(1.25 * float64(k) / 3)); held[name] > bound {
			t.Errorf("request %d went to %s, which then held %d: more than ceil(1.25 × %d / 3) = %d", k, name, held[name], k, bound)
		}
	})
	t.Logf("with hash_balance 1.25, %d requests of one key held: %v", requests, held)
	if len(held) != 3 {
		t.Errorf("with hash_balance, the hot key's requests went to %d backends, want all 3", len(held))
	}

	plainHeld, plain := hold("plain.test", func(int, string, map[string]int) {})
	t.Logf("without hash_balance: %v", plainHeld)
	if len(plainHeld) != 1 {
		t.Errorf("without hash_balance the hot key went to %v, want one backend", plainHeld)
	}

	gate.open()
	for i, ch := range append(bounded, plain...) {
		if a := recv(t, ch, fmt.Sprintf("answer %d", i)); a.err != nil || a.status != http.StatusOK {
			t.Errorf("answer %d: status %d, %v", i, a.status, a.err)
		}
	}
}
