package backend

// ExpNeg exposes expNeg to tests.
var ExpNeg = expNeg

// WallTime exposes wallTime to tests, to compare a Status's times with the
// Now-based times given to the state machine.
var WallTime = wallTime
