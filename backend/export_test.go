package backend

// ExpNeg exposes expNeg to tests.
var ExpNeg = expNeg
