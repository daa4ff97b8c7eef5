package caddylb

import "strings"

// InstanceStatesOf counts the instance states kept for the loaded configs
// whose instance URL is one of urls, and the health monitors among them
// that are probing, for tests to check that none leaks.
func InstanceStatesOf(urls ...string) (states, monitors int) {
	instanceStates.Range(func(_, v any) bool {
		s := v.(*sharedInstance)
		for _, u := range urls {
			if strings.Contains(s.key, "\x00"+u+"\x00") || strings.Contains(s.key, "\x00"+u+"/") {
				states++
				if s.monitor != nil && s.monitor.Running() {
					monitors++
				}
				break
			}
		}
		return true
	})
	return states, monitors
}
