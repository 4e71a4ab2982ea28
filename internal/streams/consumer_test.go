package streams

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestFilterSubjectsNeverLeaveTheNamespace(t *testing.T) {
	for _, tc := range []struct {
		types []string
		want  []string
	}{
		{nil, []string{"herald.events.a.>"}},
		{[]string{">"}, []string{"herald.events.a.>"}},
		{[]string{"*"}, []string{"herald.events.a.*"}},
		{[]string{"b.>"}, []string{"herald.events.a.b.>"}},
		{[]string{"*.*"}, []string{"herald.events.a.*.*"}},
		{[]string{"subscription.*", "subscription.updated", "invoice.paid"}, []string{"herald.events.a.invoice.paid", "herald.events.a.subscription.*"}},
		{[]string{"invoice.>", ">", "x"}, []string{"herald.events.a.>"}},
		{[]string{"x", "x"}, []string{"herald.events.a.x"}},
	} {
		got, err := FilterSubjects("a", tc.types)
		if err != nil {
			t.Fatalf("%v: %v", tc.types, err)
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%v: got %v, want %v", tc.types, got, tc.want)
		}
		for _, s := range got {
			if !strings.HasPrefix(s, "herald.events.a.") {
				t.Errorf("%v: %s leaves namespace a", tc.types, s)
			}
		}
	}
}

func TestFilterSubjectsRefuseBadPatterns(t *testing.T) {
	for _, p := range []string{"", "a..b", "a b", ">.a", "a.>.b", "a*", "b>", "a.\tb"} {
		if _, err := FilterSubjects("a", []string{p}); !errors.Is(err, ErrInvalidEventType) {
			t.Errorf("%q: got %v, want ErrInvalidEventType", p, err)
		}
	}
}

func TestMatches(t *testing.T) {
	for _, tc := range []struct {
		filter, subject string
		want            bool
	}{
		{"herald.events.a.>", "herald.events.a.x.y", true},
		{"herald.events.a.>", "herald.events.b.x", false},
		{"herald.events.a.*", "herald.events.a.x.y", false},
		{"herald.events.a.x.*", "herald.events.a.x.y", true},
	} {
		if got := Matches(tc.filter, tc.subject); got != tc.want {
			t.Errorf("Matches(%s, %s) = %v", tc.filter, tc.subject, got)
		}
	}
}
