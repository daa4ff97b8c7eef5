#!/usr/bin/env bash
# Puts small deliberate bugs ("mutations") into the production code, one at
# a time, and checks that the tests meant to catch each one fail. Each row
# names the file, the exact text to replace (found exactly once), what to
# replace it with, the package and the -run pattern of the tests that must
# fail. The file is restored after each row, whatever happens. Each row's
# tests are first run on the unchanged code, which they must pass.
#
#   scripts/mutations.sh            # every row
#   scripts/mutations.sh 3 5        # rows 3 and 5 only
#
# Exit status 0 when every mutation was caught. Needs bash, perl and Go;
# about 15 minutes on 2 cores. See docs/development.md.
set -euo pipefail
cd "$(dirname "$0")/.."

# Rows of five: file, text, replacement, package, tests.
mutations=(
	retry.go 'return idempotent(r) && body.rewind(true)' 'return body.rewind(true)' . '^TestRetryRules$'
	retry.go 'return key || xkey' 'return false' . '^TestRetryRules$'
	proxy.go 'at.observeAtLeast(a.timeout)' 'at.observeAtLeast(0)' . '^TestLeastLatencyAvoidsBrokenInstance$'
	retry.go 'DefaultRetryBudgetPercent = 20' 'DefaultRetryBudgetPercent = 10' . '^TestRetryBudget$'
	backend/state.go 'afterFunc(d, func() { in.openTrial(until) })' 'afterFunc(d, func() {})' ./backend '^TestTimersDoTheirJob$'
	instances.go 'if serving {' 'if false && serving {' . '^TestSlowStart$'
	report.go 'LastError:           st.LastError,' 'LastError: "",' . '^TestReport$'
	relay.go 'at.final(http.StatusSwitchingProtocols)' 'at.started = true' . '^TestUpgradeIsASuccess$'
	proxy.go 'case status == StatusClientClosedRequest || clientsFault(failure):' 'case status == StatusClientClosedRequest:' . '^TestClientBodyErrorsAreTheClients$'
	relay.go 'at.cutShort = true' 'at.cutShort = false' . '^TestResponseCutShortIsAFailure$'
	backend/instance.go 'c.RawQuery = redactQuery(u.RawQuery)' 'c.RawQuery = u.RawQuery' ./backend '^TestRedact$'
	relay.go 'if at.cookie != "" {' 'if false {' . '^TestStickyCookieOnlyOnTheFinalResponse$'
	outbound.go 'if len(conn) > 0 && listed(conn, k) {' 'if false {' . '^TestDifferential$'
	relay.go 'h["Content-Type"] = nil' '_ = h' . '^TestDifferential$'
	relay.go 'h[http.TrailerPrefix+k] = vs' '_ = vs' . '^TestDifferential$'
	proxy.go '|| errors.Is(err, errBadUpgrade)' '' . '^TestClientBodyErrorsAreTheClients$'
	backend/instance.go 'if n >= max {' 'if n > max {' . '^TestOverloadLimits$'
	backend/instance.go 'return max(1, (int64(limit)*sel+w*rampSteps-1)/(w*rampSteps))' 'return int64(limit)' ./backend '^TestTryAcquire$'
	overload.go 'q.head.signal()' 'q.tail.signal()' . '^TestQueueFIFO$'
	overload.go 'h["Retry-After"] = retryAfter' '' . '^TestOverloadRejectsAtOnce$'
	overload.go 'return errRejected' 'return nil' . '^TestOverloadRejectsAtOnce$'
	retry.go '|| !idempotent(r) ||' '||' . '^TestRetryStatus$'
	proxy.go 'failure = nil // an answer' 'failure = at.err' . '^TestRetryStatus$'
	overload.go 'polled = poll.C' 'polled = nil' . '^TestQueueAcrossReload$'
	serve.go 'if q == nil || !q.waiting() {' 'if true {' . '^TestQueueNoBarging$'
	relay.go 'if every := at.app.flush; every > 0 && !stream {' 'if every := at.app.flush; false && every > 0 {' . '^TestFlushInterval$'
	instances.go 't.in.StartSlowStart(now)' '_ = t' . '^TestSlowStartOfAddedInstances$'
	dynamic.go 'if added && first {' 'if false && added && first {' . '^TestSlowStartOfAddedInstances$'
	fleet/view.go '|| now-max(m.beat, vd.received) > window' '' ./fleet '^TestDecide$'
	fleet/view.go 'if !vd.Healthy {' 'if false {' ./fleet '^TestDecide$'
	fleet/entry.go 'write := e.prober &&' 'write := false &&' . '^TestFleetHealth$'
	health/monitor.go 'if sh != nil && !sh.s.ShouldProbe() {' 'if sh != nil && !sh.s.ShouldProbe() && false {' . '^TestFleetHealth$'
	backend/state.go 'return f&(down|flagDraining) == 0' 'return f&(flagUnhealthy|flagDraining) == 0' ./backend '^TestVerdicts$'
	backend/limit.go 'target := math.Min(l.limit, float64(inFlight-1))' 'target := l.limit' ./backend '^TestAutoLimit$'
	backend/outlier.go 'stdev := max(math.Sqrt(sq/float64(len(samples)-1)), MinStdev)' 'stdev := math.Sqrt(sq / float64(len(samples)-1))' ./backend '^TestSweepOutliers$'
	hedge.go 'other.at.abandon(other.res, other.err)' '_, _ = other.at.finish(other.res, other.err, r)' . '^TestHedging$'
	serve.go 'if n == 0 && a.hedge.on && !pinned && hedgeable(r) {' 'if false {' . '^TestHedging$'
	outlier.go 'a.pool.SweepOutliers(&a.outliers.policy, backend.Now())' '_ = a.pool' . '^TestOutlierEjection$'
	split.go 'current[best] -= total' 'current[best] -= 0' . '^TestSplit$'
	split.go 'if pool.sticky != nil && pool.sticky.pinned(r, pool.members.Load()) != nil {' 'if false {' . '^TestSplit$'
	mirror.go 'c = c.WithContext(mirrorContext{Context: ctx, values: c.Context()})' 'c = c.WithContext(c.Context())' . '^TestMirror$'
	mirror.go 'm.droppedFull.Add(1)' 'm.queue <- c' . '^TestMirror$'
	mirror.go 'c.Header.Set(MirrorHeader, "1")' '' . '^TestMirror$'
	strategy/bounded.go 'return float64(list[i].InFlight()) < math.Ceil(capacity*share)' 'return float64(list[i].InFlight()) <= math.Ceil(capacity*share)' . '^TestHashBalanceHotKey$'
	strategy/hash.go 'return list[hl.bounded(list, key, s.balance)]' 'return list[hl.best(key)]' ./strategy '^TestHashBalance'
	backend/tier.go 'if len(distinct) <= 1 {' 'if true {' . '^TestFailoverTiers$'
	backend/tier.go 'if p.failoverThreshold > 0 && available*100 < p.failoverThreshold*eligible {' 'if false {' . '^TestFailoverThreshold$'
	discovery/srv.go 'priority: int(rec.Priority)}' 'priority: 0}' . '^TestSRVTiers$'
	strategy/bounded.go 'if hl.under(list, first, capacity) {' 'if true {' . '^TestHashBalanceHotKey$'
)

selected=" $* "
failed=0
declare -A baseline
backup=$(mktemp)
restore=
trap '[ -n "$restore" ] && cp "$backup" "$restore"; rm -f "$backup"' EXIT
for ((i = 0; i < ${#mutations[@]}; i += 5)); do
	n=$((i / 5 + 1))
	if [ "$selected" != "  " ] && [[ "$selected" != *" $n "* ]]; then
		continue
	fi
	file=${mutations[i]} text=${mutations[i + 1]} repl=${mutations[i + 2]} pkg=${mutations[i + 3]} tests=${mutations[i + 4]}
	# The tests must pass on the code as it is, or failing under the
	# mutation proves nothing: checked once per package and pattern.
	if [ -z "${baseline["$pkg $tests"]:-}" ]; then
		if go test -count=1 -run "$tests" "$pkg" >/dev/null 2>&1; then
			baseline["$pkg $tests"]=pass
		else
			baseline["$pkg $tests"]=fail
		fi
	fi
	if [ "${baseline["$pkg $tests"]}" != pass ]; then
		echo "row $n: TESTS FAIL ON UNCHANGED CODE: $pkg $tests"
		failed=1
		continue
	fi
	cp "$file" "$backup"
	restore=$file
	if ! TEXT=$text REPL=$repl perl -0pi -e '$n = s/\Q$ENV{TEXT}\E/$ENV{REPL}/g; END { exit($n == 1 ? 0 : 1) }' "$file"; then
		echo "row $n: $file does not contain exactly once: $text"
		failed=1
	elif go test -count=1 -run "$tests" "$pkg" >/dev/null 2>&1; then
		echo "row $n: NOT CAUGHT: $file: $text -> $repl ($pkg $tests)"
		failed=1
	else
		echo "row $n: caught: $file: $text -> $repl ($tests)"
	fi
	cp "$backup" "$file"
	restore=
done
exit $failed
