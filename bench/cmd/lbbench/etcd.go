package main

import (
	"fmt"
	"os/exec"
	"path/filepath"
)

// startEtcd starts a one-member etcd on 127.0.0.1, its data in the
// scratch directory, on the load generator's CPUs, and returns its client
// URL. part names the bench part that needs it, for the error when etcd
// is missing.
func (b *bench) startEtcd(part string) (endpoint string, p *proc, err error) {
	etcdBin, err := exec.LookPath("etcd")
	if err != nil {
		return "", nil, fmt.Errorf("%s: etcd not found (Debian's etcd-server package; run.sh installs it): %v", part, err)
	}
	clientPort, err1 := freePort()
	peerPort, err2 := freePort()
	if err1 != nil || err2 != nil {
		return "", nil, fmt.Errorf("no free port: %v %v", err1, err2)
	}
	endpoint = fmt.Sprintf("http://127.0.0.1:%d", clientPort)
	peer := fmt.Sprintf("http://127.0.0.1:%d", peerPort)
	p, err = b.procs.start("etcd", b.opt.genCPUs, nil, filepath.Join(b.out, "logs", "etcd-"+part+".log"), etcdBin,
		"--data-dir", filepath.Join(b.work, "etcd-"+part), "--listen-client-urls", endpoint, "--advertise-client-urls", endpoint,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "default="+peer, "--log-level", "warn")
	if err != nil {
		return "", nil, err
	}
	return endpoint, p, nil
}
