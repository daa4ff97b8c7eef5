// Command caddy is Caddy with its standard modules and the load_balancer
// module, so the project runs with `go run ./cmd/caddy` and no other tool.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/golb/caddy-lb"
)

func main() {
	caddycmd.Main()
}
