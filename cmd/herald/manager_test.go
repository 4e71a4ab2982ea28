package main

import "testing"

func TestNATSServiceOfReadsTheNamespaceFromTheURL(t *testing.T) {
	for _, tc := range []struct {
		url  string
		ns   string
		port int32
	}{
		{"nats://nats.nats.svc:4222", "nats", 4222},
		{"nats://nats.messaging.svc.cluster.local:4333,nats://b.messaging.svc:4333", "messaging", 4333},
		{"nats.herald", "herald", 0},
		{"nats://10.0.0.7:4222", "", 4222},
		{"nats://nats.example.com:4222", "", 4222},
	} {
		if ns, port := natsServiceOf(tc.url); ns != tc.ns || port != tc.port {
			t.Errorf("natsServiceOf(%q) = %q, %d; want %q, %d", tc.url, ns, port, tc.ns, tc.port)
		}
	}
}
