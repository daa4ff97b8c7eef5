package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// dynamicMany measures what discovering many instances costs the request
// path: one app of -dynamic-instances instances (each a base path on one
// backend), listed in the config (static) or registered in etcd and
// watched (dynamic), the dynamic ones replaced at -dynamic-churn of them
// per second while wrk measures; cases interleaved over the rounds.
func (b *bench) dynamicMany() error {
	n := b.opt.dynamicInstances
	backends, ports, err := b.startBackends(1, 16, 0)
	defer func() { stopAllOf(backends) }()
	if err != nil {
		return err
	}
	endpoint, etcd, err := b.startEtcd("dynamic10k")
	if err != nil {
		return err
	}
	defer stop(etcd, 3*time.Second)
	cl, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 2 * time.Second})
	if err != nil {
		return err
	}
	defer cl.Close()

	const prefix = "/lbbench/instances/"
	instanceURL := func(i int) string { return fmt.Sprintf("http://127.0.0.1:%d/i%d", ports[0], i) }
	live := make([]int, 0, n) // the registered instances' numbers
	for i := 0; i < n; i++ {
		live = append(live, i)
	}
	if err := putBatch(cl, prefix, live, instanceURL, nil); err != nil {
		return fmt.Errorf("registering %d instances: %w", n, err)
	}
	progress("dynamic  %d instances registered in etcd", n)

	b.printf("## %d instances, discovered and churning\n\n", n)
	b.printf("One app of %d instances (base paths on one backend), round robin, no health checks: listed in the config "+
		"(static), or registered in etcd and watched (dynamic) while %d of them are replaced every second. "+
		"Tiny body, %d connections; medians over %d interleaved rounds of %v.\n\n",
		n, b.opt.dynamicChurn, b.opt.connections, b.opt.rounds, b.opt.duration)
	type row struct{ rps, p50, p99 []float64 }
	rows := map[string]*row{"static": {}, "dynamic": {}}
	next := n
	for r := 1; r <= b.opt.rounds; r++ {
		for _, kind := range []string{"static", "dynamic"} {
			res, changes, err := b.measureMany(kind, r, n, ports[0], endpoint, prefix, func(stopChurn <-chan struct{}) int {
				if kind != "dynamic" {
					return 0
				}
				changes := 0
				tick := time.NewTicker(time.Second)
				defer tick.Stop()
				for {
					select {
					case <-stopChurn:
						return changes
					case <-tick.C:
					}
					var gone, added []int
					for _, k := range rand.Perm(len(live))[:min(b.opt.dynamicChurn, len(live))] {
						gone = append(gone, live[k])
						live[k] = next
						added = append(added, next)
						next++
					}
					if err := putBatch(cl, prefix, added, instanceURL, gone); err != nil {
						progress("dynamic  churn failed: %v", err)
						continue
					}
					changes += len(added) + len(gone)
				}
			})
			if err != nil {
				return fmt.Errorf("%s, round %d: %w", kind, r, err)
			}
			rw := rows[kind]
			rw.rps = append(rw.rps, res.RPS())
			rw.p50 = append(rw.p50, ms(res.P50))
			rw.p99 = append(rw.p99, ms(res.P99))
			progress("dynamic  round %d/%d  %-8s %8.0f rps  p50 %6.3f ms  p99 %6.3f ms  errors %d  membership changes %d",
				r, b.opt.rounds, kind, res.RPS(), ms(res.P50), ms(res.P99), res.Errors(), changes)
		}
	}
	b.printf("| case | requests/s | p50 ms | p99 ms | requests/s ÷ static | p99 ÷ static |\n|---|---:|---:|---:|---:|---:|\n")
	for _, kind := range []string{"static", "dynamic"} {
		rw := rows[kind]
		b.printf("| %s | %.0f | %.3f | %.3f | %.2f | %.2f |\n", kind, median(rw.rps), median(rw.p50), median(rw.p99),
			median(rw.rps)/median(rows["static"].rps), median(rw.p99)/median(rows["static"].p99))
	}
	b.printf("\n")
	return nil
}

// measureMany runs one case of dynamicMany: Caddy on its config, a
// warm-up, then wrk measuring while churn runs (it returns the membership
// changes it made when stop is closed).
func (b *bench) measureMany(kind string, round, n, backendPort int, endpoint, prefix string, churn func(stop <-chan struct{}) int) (wrkResult, int, error) {
	admin, err1 := freePort()
	port, err2 := freePort()
	if err1 != nil || err2 != nil {
		return wrkResult{}, 0, fmt.Errorf("no free port: %v %v", err1, err2)
	}
	var app strings.Builder
	if kind == "static" {
		const perLine = 50
		for i := 0; i < n; i += perLine {
			app.WriteString("\t\t\tinstances")
			for k := i; k < min(i+perLine, n); k++ {
				fmt.Fprintf(&app, " http://127.0.0.1:%d/i%d", backendPort, k)
			}
			app.WriteString("\n")
		}
	} else {
		fmt.Fprintf(&app, "\t\t\tdynamic etcd %s {\n\t\t\t\tendpoints %s\n\t\t\t}\n", prefix, endpoint)
	}
	config := globalOptions(admin) + fmt.Sprintf("\nhttp://127.0.0.1:%d {\n\tload_balancer {\n\t\tapp * {\n\t\t\tstrategy round_robin\n%s\t\t}\n\t}\n}\n", port, app.String())
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	caddy, err := b.startCaddy(fmt.Sprintf("many-%s-r%d", kind, round), config, url, "")
	if err != nil {
		return wrkResult{}, 0, err
	}
	defer stop(caddy, 5*time.Second)
	if err := waitInstances(admin, n, 60*time.Second); err != nil {
		return wrkResult{}, 0, err
	}
	run := wrkRun{cpus: b.opt.genCPUs, threads: b.opt.threads, connections: b.opt.connections, url: url}
	if b.opt.warmup > 0 {
		run.duration = b.opt.warmup
		if _, err := b.runWrk(run); err != nil {
			return wrkResult{}, 0, err
		}
	}
	stopChurn := make(chan struct{})
	changes := make(chan int, 1)
	go func() { changes <- churn(stopChurn) }()
	run.duration = b.opt.duration
	run.script = filepath.Join(b.work, "report.lua")
	run.logPath = filepath.Join(b.out, "logs", fmt.Sprintf("wrk-many-%s-r%d.txt", kind, round))
	res, err := b.runWrk(run)
	close(stopChurn)
	return res, <-changes, err
}

// waitInstances waits until the report of the Caddy on admin lists n
// instances.
func waitInstances(admin, n int, timeout time.Duration) error {
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil}}
	deadline := time.Now().Add(timeout)
	got := -1
	for time.Now().Before(deadline) {
		resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/api/v1/loadBalancers/report", admin))
		if err == nil {
			var rep struct {
				Apps []struct {
					Instances []json.RawMessage `json:"instances"`
				} `json:"apps"`
			}
			err = json.NewDecoder(resp.Body).Decode(&rep)
			resp.Body.Close()
			if err == nil && len(rep.Apps) == 1 {
				if got = len(rep.Apps[0].Instances); got == n {
					return nil
				}
			}
		}
		time.Sleep(200 * time.Millisecond) // polling a report that has no event to wait on
	}
	return fmt.Errorf("the report lists %d instances after %v, want %d", got, timeout, n)
}

// putBatch registers the instances numbered add and removes those numbered
// del, in transactions of at most 128 operations (etcd's default limit).
func putBatch(cl *clientv3.Client, prefix string, add []int, url func(int) string, del []int) error {
	var ops []clientv3.Op
	for _, i := range del {
		ops = append(ops, clientv3.OpDelete(fmt.Sprintf("%s%d", prefix, i)))
	}
	for _, i := range add {
		ops = append(ops, clientv3.OpPut(fmt.Sprintf("%s%d", prefix, i), url(i)))
	}
	for len(ops) > 0 {
		k := min(len(ops), 128)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := cl.Txn(ctx).Then(ops[:k]...).Commit()
		cancel()
		if err != nil {
			return err
		}
		ops = ops[k:]
	}
	return nil
}
