package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
)

// apiTokenEnv names the environment variable that may hold the API token.
const apiTokenEnv = "STRATA_API_TOKEN"

// apiAccess returns who may use POST /store, GET /read and POST /sites, from -api-token,
// -api-token-file, $STRATA_API_TOKEN (read only when neither flag is given) and
// -api-insecure-no-auth. A token and -api-insecure-no-auth exclude each other, as do the two
// token flags; a token must not be empty nor hold whitespace or control characters (it could
// never match an Authorization header). The second result names where the token came from.
func apiAccess(token, tokenFile string, insecure bool) (access, string, error) {
	source := ""
	switch {
	case token != "" && tokenFile != "":
		return access{}, "", errors.New("-api-token and -api-token-file: give one of them")
	case token != "":
		source = "-api-token"
	case tokenFile != "":
		b, err := os.ReadFile(tokenFile)
		if err != nil {
			return access{}, "", fmt.Errorf("-api-token-file: %w", err)
		}
		token = strings.TrimSpace(string(b))
		source = "-api-token-file " + tokenFile
		if token == "" {
			return access{}, "", fmt.Errorf("%s: the file is empty", source)
		}
	default:
		token = os.Getenv(apiTokenEnv)
		if token != "" {
			source = "$" + apiTokenEnv
		}
	}
	if token == "" {
		if insecure {
			return access{open: true}, "", nil
		}
		return access{}, "", nil
	}
	if insecure {
		return access{}, "", fmt.Errorf("-api-insecure-no-auth and an API token (%s): give one of them", source)
	}
	if strings.IndexFunc(token, func(r rune) bool { return r <= ' ' || r == 0x7f }) >= 0 {
		return access{}, "", fmt.Errorf("the API token (%s) holds whitespace or control characters", source)
	}
	return tokenAccess(token), source, nil
}

// httpTLSConfig returns the HTTPS configuration of the HTTP API from -http-tls-cert,
// -http-tls-key and -http-tls-client-ca; nil (plain HTTP) when none is given. The files are
// read once: a new certificate takes a restart.
func httpTLSConfig(certFile, keyFile, clientCAFile string) (*tls.Config, error) {
	if certFile == "" && keyFile == "" {
		if clientCAFile != "" {
			return nil, errors.New("-http-tls-client-ca needs -http-tls-cert and -http-tls-key")
		}
		return nil, nil
	}
	if certFile == "" || keyFile == "" {
		return nil, errors.New("-http-tls-cert and -http-tls-key go together")
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("-http-tls-cert/-http-tls-key: %w", err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if clientCAFile != "" {
		b, err := os.ReadFile(clientCAFile)
		if err != nil {
			return nil, fmt.Errorf("-http-tls-client-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("-http-tls-client-ca %s: no PEM certificate in it", clientCAFile)
		}
		cfg.ClientCAs, cfg.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// tlsMode describes a TLS configuration of the HTTP API for the logs.
func tlsMode(cfg *tls.Config) string {
	switch {
	case cfg == nil:
		return "off"
	case cfg.ClientAuth == tls.RequireAndVerifyClientCert:
		return "mutual"
	}
	return "on"
}
