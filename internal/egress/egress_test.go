package egress_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/herald-dev/herald/internal/egress"
)

func prefixes(t *testing.T, s string) []netip.Prefix {
	t.Helper()
	ps, err := egress.ParsePrefixes(s)
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

func TestDefaultDenied(t *testing.T) {
	g := egress.New(egress.Config{})
	for _, tc := range []struct {
		addr string
		why  string // part of the refusal; empty: allowed
	}{
		{"127.0.0.1", "loopback"},
		{"127.255.255.254", "loopback"},
		{"::1", "loopback"},
		{"10.0.0.5", "private"},
		{"10.255.255.255", "private"},
		{"172.16.0.1", "private"},
		{"172.31.255.255", "private"},
		{"192.168.1.1", "private"},
		{"100.64.0.1", "CGNAT"},
		{"100.127.255.255", "CGNAT"},
		{"169.254.169.254", "metadata"},
		{"fe80::1", "link-local"},
		{"fe80::1%eth0", "link-local"},
		{"fc00::1", "unique-local"},
		{"fd12:3456::1", "unique-local"},
		{"0.0.0.0", "unspecified"},
		{"::", "unspecified"},
		{"224.0.0.1", "multicast"},
		{"239.255.255.250", "multicast"},
		{"ff02::1", "multicast"},
		{"255.255.255.255", "broadcast"},
		// IPv4-mapped IPv6 is checked as the IPv4 address it carries.
		{"::ffff:127.0.0.1", "loopback"},
		{"::ffff:10.0.0.5", "private"},
		{"::ffff:169.254.169.254", "metadata"},
		// NAT64 reaches the IPv4 address in its last 32 bits.
		{"64:ff9b::a9fe:a9fe", "metadata"},
		// The edges of the ranges, and the public internet.
		{"8.8.8.8", ""},
		{"172.15.255.255", ""},
		{"172.32.0.0", ""},
		{"100.63.255.255", ""},
		{"100.128.0.0", ""},
		{"192.169.0.1", ""},
		{"11.0.0.1", ""},
		{"::ffff:8.8.8.8", ""},
		{"64:ff9b::808:808", ""},
		{"2606:4700::1111", ""},
	} {
		err := g.Check(netip.MustParseAddr(tc.addr))
		switch {
		case tc.why == "" && err != nil:
			t.Errorf("%s: refused: %v", tc.addr, err)
		case tc.why != "" && err == nil:
			t.Errorf("%s: allowed, want refused (%s)", tc.addr, tc.why)
		case tc.why != "" && !errors.Is(err, egress.ErrRefused):
			t.Errorf("%s: %v does not wrap ErrRefused", tc.addr, err)
		case tc.why != "" && !strings.Contains(err.Error(), tc.why):
			t.Errorf("%s: %q does not say %q", tc.addr, err, tc.why)
		}
	}
}

func TestRefusalNamesAddressAndFlag(t *testing.T) {
	err := egress.New(egress.Config{}).Check(netip.MustParseAddr("10.0.0.5"))
	want := "egress to 10.0.0.5 refused: a private range; an administrator can allow it with --egress-allow=10.0.0.5/32"
	if err == nil || err.Error() != want {
		t.Fatalf("got %v, want %q", err, want)
	}
	var re *egress.RefusedError
	if !errors.As(err, &re) || re.Addr != netip.MustParseAddr("10.0.0.5") {
		t.Fatalf("not a RefusedError for the address: %#v", err)
	}
	// A mapped address is named, and opened, as its IPv4 address.
	err = egress.New(egress.Config{}).Check(netip.MustParseAddr("::ffff:127.0.0.1"))
	if err == nil || !strings.Contains(err.Error(), "egress to 127.0.0.1 refused") || !strings.HasSuffix(err.Error(), "--egress-allow=127.0.0.1/32") {
		t.Fatalf("got %v", err)
	}
	err = egress.New(egress.Config{}).Check(netip.MustParseAddr("fe80::1%eth0"))
	if err == nil || !strings.HasSuffix(err.Error(), "--egress-allow=fe80::1/128") {
		t.Fatalf("got %v", err)
	}
}

func TestAllowWinsOverDeny(t *testing.T) {
	g := egress.New(egress.Config{
		Allow: prefixes(t, "127.0.0.0/8, 10.214.0.0/24,10.215.0.7"),
		Deny:  prefixes(t, "10.214.0.0/16,203.0.113.0/24"),
	})
	for addr, allowed := range map[string]bool{
		"127.0.0.1":        true,
		"::ffff:127.0.0.1": true, // allowed as the IPv4 address it carries
		"::1":              false,
		"10.214.0.9":       true,  // allowed inside an extra denied range
		"10.214.1.9":       false, // the rest of the extra denied range
		"10.215.0.7":       true,  // a bare address is a /32
		"10.215.0.8":       false,
		"203.0.113.5":      false, // an extra denied range outside the defaults
		"8.8.8.8":          true,
	} {
		err := g.Check(netip.MustParseAddr(addr))
		if allowed != (err == nil) {
			t.Errorf("%s: allowed %v, got %v", addr, allowed, err)
		}
	}
	err := g.Check(netip.MustParseAddr("203.0.113.5"))
	if err == nil || !strings.Contains(err.Error(), "--egress-deny") || !strings.Contains(err.Error(), "--egress-allow=203.0.113.5/32") {
		t.Fatalf("got %v", err)
	}
}

func TestMappedAllowPrefix(t *testing.T) {
	g := egress.New(egress.Config{Allow: prefixes(t, "::ffff:10.1.0.0/112")})
	if err := g.Check(netip.MustParseAddr("10.1.2.3")); err != nil {
		t.Fatal(err)
	}
	if err := g.Check(netip.MustParseAddr("10.2.0.1")); err == nil {
		t.Fatal("10.2.0.1 allowed")
	}
}

func TestParsePrefixes(t *testing.T) {
	ps := prefixes(t, " 10.0.0.5/8 ,,::1,fd00::/8")
	got := egress.PrefixList{P: &ps}.String()
	if got != "10.0.0.0/8,::1/128,fd00::/8" {
		t.Fatalf("got %q", got)
	}
	for _, bad := range []string{"10.0.0.0/33", "10.0.0", "example.com", "10.0.0.0/8/1"} {
		if _, err := egress.ParsePrefixes(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestControl(t *testing.T) {
	g := egress.New(egress.Config{})
	if err := g.Control("tcp4", "127.0.0.1:80", nil); !errors.Is(err, egress.ErrRefused) {
		t.Fatalf("got %v", err)
	}
	if err := g.Control("tcp6", "[::ffff:10.0.0.1]:443", nil); !errors.Is(err, egress.ErrRefused) {
		t.Fatalf("got %v", err)
	}
	if err := g.Control("tcp", "not-an-address", nil); !errors.Is(err, egress.ErrRefused) {
		t.Fatalf("an unparsable address must be refused, got %v", err)
	}
	if err := g.Control("tcp4", "8.8.8.8:443", nil); err != nil {
		t.Fatal(err)
	}
}

// listener counts the connections it accepts.
func listener(t *testing.T) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			n.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, &n
}

func get(t *testing.T, g *egress.Guard, proxy func(*http.Request) (*url.URL, error), target string) error {
	t.Helper()
	tr := &http.Transport{Proxy: proxy, DialContext: (&net.Dialer{Timeout: 5 * time.Second, Control: g.Control}).DialContext}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(context.Background(), http.MethodGet, target, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err == nil {
		resp.Body.Close()
	}
	return err
}

// A hostname is checked as the address it resolves to, and a guard that
// allows loopback lets the same request through.
func TestDialChecksResolvedAddress(t *testing.T) {
	srv, n := listener(t)
	port := srv.Listener.Addr().(*net.TCPAddr).Port
	target := "http://localhost:" + strconv.Itoa(port) + "/"
	if err := get(t, egress.New(egress.Config{}), nil, target); !errors.Is(err, egress.ErrRefused) {
		t.Fatalf("localhost: got %v, want a refusal", err)
	}
	if err := get(t, egress.New(egress.Config{}), nil, srv.URL); !errors.Is(err, egress.ErrRefused) {
		t.Fatalf("127.0.0.1: got %v, want a refusal", err)
	}
	if got := n.Load(); got != 0 {
		t.Fatalf("the listener accepted %d connections", got)
	}
	if err := get(t, egress.New(egress.Config{Allow: prefixes(t, "127.0.0.0/8")}), nil, srv.URL); err != nil {
		t.Fatal(err)
	}
	if n.Load() != 1 {
		t.Fatalf("with loopback allowed the listener accepted %d connections", n.Load())
	}
}

// The proxy from the environment is reached through the same dialer, so
// its address is checked: a proxy on loopback is refused, and nothing
// reaches it. (Once a proxy is allowed, the target's address is the
// proxy's to check: the guard only sees the connection to the proxy.)
func TestProxyFromEnvironmentIsChecked(t *testing.T) {
	proxy, n := listener(t)
	t.Setenv("HTTP_PROXY", proxy.URL)
	t.Setenv("http_proxy", proxy.URL)
	t.Setenv("NO_PROXY", "")
	t.Setenv("no_proxy", "")
	// http.ProxyFromEnvironment reads the environment once per process:
	// no other test in this package may call it first.
	// A public target (TEST-NET-3), so only the proxy is local.
	err := get(t, egress.New(egress.Config{}), http.ProxyFromEnvironment, "http://203.0.113.10/")
	if !errors.Is(err, egress.ErrRefused) || !strings.Contains(err.Error(), "127.0.0.1") {
		t.Fatalf("got %v, want the proxy's address refused", err)
	}
	if got := n.Load(); got != 0 {
		t.Fatalf("the proxy accepted %d connections", got)
	}
}
