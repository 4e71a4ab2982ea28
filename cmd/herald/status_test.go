package main

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/herald-dev/herald/pkg/events"
)

// TestStatusRefusesBadInput: herald status checks the id, namespace and
// type by the producer contract's rules before it connects to NATS. An id
// of '>' or '*' would otherwise become a wildcard over the delivery log.
func TestStatusRefusesBadInput(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want error
	}{
		{"full wildcard id", []string{">"}, events.ErrInvalidID},
		{"token wildcard id", []string{"*"}, events.ErrInvalidID},
		{"id with a dot", []string{"evt.1"}, events.ErrInvalidID},
		{"id too long", []string{strings.Repeat("a", 129)}, events.ErrInvalidID},
		{"wildcard namespace", []string{"--namespace", "*", "evt_1"}, events.ErrInvalidNamespace},
		{"namespace with a dot", []string{"--namespace", "a.b", "evt_1"}, events.ErrInvalidNamespace},
		{"empty namespace", []string{"--namespace", "", "evt_1"}, events.ErrInvalidNamespace},
		{"wildcard type", []string{"--type", ">", "evt_1"}, events.ErrInvalidType},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url, contacted := natsTrap(t)
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			err := runStatus(ctx, append([]string{"--nats-url", url}, tc.args...))
			if !errors.Is(err, tc.want) {
				t.Errorf("runStatus(%q) = %v, want %v", tc.args, err, tc.want)
			}
			if contacted() {
				t.Errorf("runStatus(%q) connected to NATS before refusing", tc.args)
			}
		})
	}
}

// natsTrap is a TCP listener that is no NATS server: contacted reports
// whether anything connected to it. herald connects synchronously inside
// nats.Connect, so a connection made is pending by the time runStatus
// returns, and Accept finds it at once; the deadline only bounds the wait
// when there is none.
func natsTrap(t *testing.T) (url string, contacted func() bool) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return "nats://" + l.Addr().String(), func() bool {
		_ = l.(*net.TCPListener).SetDeadline(time.Now().Add(200 * time.Millisecond))
		c, err := l.Accept()
		if err != nil {
			return false
		}
		c.Close()
		return true
	}
}

// TestStatusQueryScope: a valid id is always looked up in one namespace,
// "default" unless --namespace says otherwise, as herald send publishes.
func TestStatusQueryScope(t *testing.T) {
	for _, tc := range []struct {
		args           []string
		wantNS, wantID string
	}{
		{[]string{"evt_1"}, "default", "evt_1"},
		{[]string{"--namespace", "shop", "evt_1"}, "shop", "evt_1"},
		{[]string{"--namespace", "shop", "--type", "subscription.updated", "evt-2"}, "shop", "evt-2"},
	} {
		q, err := parseStatusArgs(tc.args)
		if err != nil {
			t.Fatalf("parseStatusArgs(%q): %v", tc.args, err)
		}
		if q.namespace != tc.wantNS || q.id != tc.wantID {
			t.Errorf("parseStatusArgs(%q) = namespace %q id %q, want %q %q", tc.args, q.namespace, q.id, tc.wantNS, tc.wantID)
		}
	}
}
