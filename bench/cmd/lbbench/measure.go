package main

import (
	"fmt"
	"path/filepath"
	"time"
)

// A caseRun is one measured case of a part: a fresh Caddy on its own
// config, warmed up, then measured by wrk.
type caseRun struct {
	name   string                           // the Caddy run's name (its config's file name) and wrk's log's
	config func(adminPort, port int) string // the Caddyfile, for Caddy's admin and site ports
	wrk    wrkRun                           // how wrk loads it; url, duration and logPath are set here
	// Optional: called before the measured run, and after it (Caddy
	// still running, with its admin port), for what the case reads
	// besides wrk.
	before func() error
	after  func(adminPort int) error
}

// measureCase runs c: Caddy started and waited for (its admin endpoint
// answering), -warmup of load, the measured -duration, then after, then
// Caddy stopped, whatever happened.
func (b *bench) measureCase(c caseRun) (wrkResult, error) {
	admin, err1 := freePort()
	front, err2 := freePort()
	if err1 != nil || err2 != nil {
		return wrkResult{}, fmt.Errorf("no free port: %v %v", err1, err2)
	}
	caddy, err := b.startCaddy(c.name, c.config(admin, front), fmt.Sprintf("http://127.0.0.1:%d/config/", admin), "")
	if err != nil {
		return wrkResult{}, err
	}
	defer stop(caddy, 5*time.Second)
	run := c.wrk
	run.url = fmt.Sprintf("http://127.0.0.1:%d/", front)
	if run.script == "" {
		run.script = filepath.Join(b.work, "report.lua")
	}
	if b.opt.warmup > 0 {
		run.duration = b.opt.warmup
		if _, err := b.runWrk(run); err != nil {
			return wrkResult{}, err
		}
	}
	if c.before != nil {
		if err := c.before(); err != nil {
			return wrkResult{}, err
		}
	}
	run.duration = b.opt.duration
	run.logPath = filepath.Join(b.out, "logs", "wrk-"+c.name+".txt")
	res, err := b.runWrk(run)
	if err != nil {
		return res, err
	}
	if c.after != nil {
		err = c.after(admin)
	}
	return res, err
}
