// Package tlsopt reads the Caddyfile's tls_* options of a TLS client, as
// reverse_proxy's http transport spells them, into Caddy's
// reverseproxy.TLSConfig:
//
//	tls_client_auth          <cert_file> <key_file>
//	tls_trust_pool           file <pem_files...>
//	tls_insecure_skip_verify
//	tls_server_name          <name>
package tlsopt

import (
	"fmt"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// Options are the options Unmarshal reads, with their syntax.
var Options = []string{"tls_client_auth", "tls_trust_pool", "tls_insecure_skip_verify", "tls_server_name"}

// IsOption reports whether name is one of Options.
func IsOption(name string) bool {
	for _, o := range Options {
		if o == name {
			return true
		}
	}
	return false
}

// Set sets the tls_* option opt, with the arguments of its line, in *cfg,
// made if nil. Its errors name the option; the caller adds where it was.
func Set(cfg **reverseproxy.TLSConfig, opt string, args []string) error {
	if *cfg == nil {
		*cfg = new(reverseproxy.TLSConfig)
	}
	c := *cfg
	switch opt {
	case "tls_client_auth":
		if len(args) != 2 {
			return fmt.Errorf("%s: want <cert_file> <key_file>", opt)
		}
		c.ClientCertificateFile, c.ClientCertificateKeyFile = args[0], args[1]
	case "tls_trust_pool":
		if len(args) < 2 || args[0] != "file" {
			return fmt.Errorf("%s: want file <pem_files...>", opt)
		}
		c.RootCAPEMFiles = append(c.RootCAPEMFiles, args[1:]...)
	case "tls_insecure_skip_verify":
		if len(args) != 0 {
			return fmt.Errorf("%s: want no arguments", opt)
		}
		c.InsecureSkipVerify = true
	case "tls_server_name":
		if len(args) != 1 {
			return fmt.Errorf("%s: want one name", opt)
		}
		c.ServerName = args[0]
	default:
		return fmt.Errorf("unknown TLS option %q", opt)
	}
	return nil
}
