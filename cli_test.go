package caddylb_test

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// caddyCmd returns a command that runs this test binary as the caddy
// command (see TestMain), with its state kept in a temporary directory.
func caddyCmd(t *testing.T, args ...string) *exec.Cmd {
	t.Helper()
	home := t.TempDir()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(),
		runAsCaddyEnv+"=1",
		"HOME="+home,
		"XDG_CONFIG_HOME="+filepath.Join(home, "config"),
		"XDG_DATA_HOME="+filepath.Join(home, "data"),
	)
	return cmd
}

// writeFile writes content to a new file named name and returns its path.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestCLIRefusesBadConfig(t *testing.T) {
	tests := []struct {
		name      string
		app       string // body of the app block
		adaptFail bool   // caught by the Caddyfile parser already
		want      []string
	}{
		{"unknown subdirective", "instances 127.0.0.1:1\nbogus 5", true, []string{"Caddyfile:", "bogus"}},
		{"unparsable duration", "timeout soon\ninstances 127.0.0.1:1", true, []string{"Caddyfile:", "timeout", "soon"}},
		{"zero duration", "health_check_cooldown 0s\ninstances 127.0.0.1:1", true, []string{"Caddyfile:", "health_check_cooldown"}},
		{"bad scheme", "instances ftp://127.0.0.1:21", true, []string{"Caddyfile:", `app "api.test"`, "instances", "scheme"}},
		{"unknown strategy", "strategy fastest\ninstances 127.0.0.1:1", true, []string{"Caddyfile:", `app "api.test"`, "strategy", "fastest"}},
		{"health_uri without slash", "health_uri health\ninstances 127.0.0.1:1", true, []string{"Caddyfile:", `app "api.test"`, "health_uri"}},
		{"duplicate app", "instances 127.0.0.1:1\n}\napp API.test {\ninstances 127.0.0.1:2", true, []string{`app "API.test"`, "host", "duplicate"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeFile(t, "Caddyfile", fmt.Sprintf(`{
	admin off
}
http://127.0.0.1:%d {
	load_balancer {
		app api.test {
			%s
		}
	}
}`, freePort(), tt.app))
			for _, verb := range []string{"validate", "adapt"} {
				out, err := caddyCmd(t, verb, "--config", path).CombinedOutput()
				wantFail := verb == "validate" || tt.adaptFail
				var exitErr *exec.ExitError
				if !wantFail {
					if err != nil {
						t.Errorf("caddy %s: %v\n%s", verb, err, out)
					}
					continue
				}
				if !errors.As(err, &exitErr) || exitErr.ExitCode() == 0 {
					t.Errorf("caddy %s: exit %v, want non-zero\n%s", verb, err, out)
					continue
				}
				for _, w := range tt.want {
					if !strings.Contains(unescape(out), w) {
						t.Errorf("caddy %s output does not mention %q:\n%s", verb, w, out)
					}
				}
			}
		})
	}

	t.Run("good config validates", func(t *testing.T) {
		path := writeFile(t, "Caddyfile", `{
	admin off
}
http://127.0.0.1:1 {
	load_balancer 127.0.0.1:2 {
		health_uri /health
	}
}`)
		if out, err := caddyCmd(t, "validate", "--config", path).CombinedOutput(); err != nil {
			t.Fatalf("caddy validate: %v\n%s", err, out)
		}
	})
}

// unescape strips the backslashes Caddy's JSON logs put before quotes.
func unescape(out []byte) string { return strings.ReplaceAll(string(out), `\`, "") }

// syncBuffer is a bytes.Buffer safe for a child process to write while the
// test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestCLIReloadAndGracefulStop runs caddy as a process: a bad `caddy
// reload` is refused while the running config keeps serving, and SIGTERM
// lets a request in flight finish before Caddy exits.
func TestCLIReloadAndGracefulStop(t *testing.T) {
	b := newBackend(t, "b")
	arrived := make(chan struct{}, 1)
	release := newGate()
	t.Cleanup(release.open)
	b.handle(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			arrived <- struct{}{}
			_ = release.wait(r.Context())
		}
		fmt.Fprint(w, "served")
	})
	port, admin := freePort(), fmt.Sprintf("localhost:%d", freePort())
	config := func(app string) string {
		return writeFile(t, "Caddyfile", fmt.Sprintf(`{
	admin %s
	persist_config off
	grace_period 30s
	default_bind 127.0.0.1
}
http://:%d {
	load_balancer {
		app api.test {
			%s
		}
	}
}`, admin, port, app))
	}

	cmd := caddyCmd(t, "run", "--config", config("instances "+b.URL))
	var output syncBuffer
	cmd.Stdout, cmd.Stderr = &output, &output
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var exitErr error
	go func() {
		exitErr = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("caddy output:\n%s", output.String())
		}
	})

	get := func(path string) (int, string, error) {
		req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d%s", port, path), nil)
		req.Host = "api.test"
		resp, err := (&http.Client{Timeout: time.Minute}).Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		var body bytes.Buffer
		_, err = body.ReadFrom(resp.Body)
		return resp.StatusCode, body.String(), err
	}
	waitFor(t, "caddy to serve", func() bool {
		status, _, err := get("/")
		return err == nil && status == 200
	})

	// A JSON config passes `caddy reload` to the running Caddy as it is, so
	// it is the running Caddy that refuses it.
	bad := writeFile(t, "bad.json", fmt.Sprintf(`{"admin":{"listen":%q},"apps":{"http":{"servers":{"s":{"listen":["127.0.0.1:%d"],
		"routes":[{"handle":[{"handler":"load_balancer","apps":[{"host":"api.test","instances":[{"url":"gopher://127.0.0.1:1"}]}]}]}]}}}}}`, admin, port))
	out, err := caddyCmd(t, "reload", "--config", bad, "--address", admin).CombinedOutput()
	if err == nil || !strings.Contains(unescape(out), `app "api.test"`) || !strings.Contains(unescape(out), "instances[0].url") {
		t.Fatalf("bad reload: err %v, output:\n%s", err, out)
	}
	if status, body, err := get("/"); err != nil || status != 200 || body != "served" {
		t.Fatalf("after a refused reload: %d %q %v", status, body, err)
	}

	slow := make(chan answer, 1)
	go func() {
		status, body, err := get("/slow")
		slow <- answer{status, body, err}
	}()
	recv(t, arrived, "the slow request at the backend")
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// Caddy stops accepting before it waits for the request in flight.
	waitFor(t, "the listener to close", func() bool {
		conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			conn.Close()
		}
		return err != nil
	})
	select {
	case <-exited:
		t.Fatalf("caddy exited with a request in flight: %v", exitErr)
	default:
	}
	release.open()
	if r := recv(t, slow, "the answer in flight at SIGTERM"); r.err != nil || r.status != 200 || r.body != "served" {
		t.Fatalf("request in flight at SIGTERM: %d %q %v", r.status, r.body, r.err)
	}
	recv(t, exited, "caddy to exit")
	if exitErr != nil {
		t.Fatalf("caddy exit: %v", exitErr)
	}
}
