package health

// NewClient exposes newClient to tests.
var NewClient = newClient
