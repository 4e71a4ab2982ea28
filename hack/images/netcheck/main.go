// Command netcheck is the e2e cluster's network probe: the images built
// for it have no shell, curl or nslookup, so a pod that must check a
// Service or the cluster DNS runs this instead.
//
//	netcheck get URL       GET the URL, print status and body, exit 1 unless 2xx
//	netcheck resolve NAME  look NAME up with the pod's resolver, print the addresses
//	netcheck api PATH      GET PATH from the API server at https://kubernetes.default.svc
//	                       with the pod's ServiceAccount token, verifying TLS with its CA
//
// Both retry for -timeout (default 30s), since a fresh Service or DNS
// record takes a moment to be programmed.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

// sa is where the kubelet mounts a pod's ServiceAccount credentials.
const sa = "/var/run/secrets/kubernetes.io/serviceaccount/"

func main() {
	timeout := flag.Duration("timeout", 30*time.Second, "give up after this long")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: netcheck [-timeout 30s] get URL | resolve NAME | api PATH")
	}
	flag.Parse()
	if flag.NArg() != 2 {
		flag.Usage()
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	var check func(context.Context) error
	switch cmd, arg := flag.Arg(0), flag.Arg(1); cmd {
	case "get":
		check = func(ctx context.Context) error { return get(ctx, arg) }
	case "resolve":
		check = func(ctx context.Context) error { return resolve(ctx, arg) }
	case "api":
		client, err := apiClient()
		if err != nil {
			fmt.Fprintln(os.Stderr, "netcheck:", err)
			os.Exit(1)
		}
		check = func(ctx context.Context) error { return api(ctx, client, arg) }
	default:
		flag.Usage()
		os.Exit(2)
	}
	for {
		try, done := context.WithTimeout(ctx, 5*time.Second)
		err := check(try)
		done()
		if err == nil {
			return
		}
		fmt.Fprintln(os.Stderr, "netcheck:", err)
		select {
		case <-ctx.Done():
			os.Exit(1)
		case <-time.After(time.Second):
		}
	}
}

func get(ctx context.Context, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	return show(http.DefaultClient, req, "")
}

// show makes the request and prints the answer; anything but 2xx fails.
func show(client *http.Client, req *http.Request, note string) error {
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("GET %s: %s", req.URL, resp.Status)
	}
	fmt.Printf("GET %s: %s%s\n%s\n", req.URL, resp.Status, note, body)
	return nil
}

func resolve(ctx context.Context, name string) error {
	addrs, err := net.DefaultResolver.LookupHost(ctx, name)
	if err != nil {
		return err
	}
	fmt.Printf("%s: %v\n", name, addrs)
	return nil
}

// apiClient trusts only the cluster CA the pod was given.
func apiClient() (*http.Client, error) {
	ca, err := os.ReadFile(sa + "ca.crt")
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, errors.New(sa + "ca.crt holds no certificate")
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}, nil
}

func api(ctx context.Context, client *http.Client, path string) error {
	token, err := os.ReadFile(sa + "token")
	if err != nil {
		return err
	}
	url := "https://kubernetes.default.svc" + path
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	return show(client, req, " (TLS verified with the ServiceAccount CA)")
}
