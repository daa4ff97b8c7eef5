package caddylb

// InstanceStates returns the number of instance states kept for the
// loaded configs, for tests to check that none leaks.
func InstanceStates() int {
	n := 0
	instanceStates.Range(func(any, any) bool { n++; return true })
	return n
}
