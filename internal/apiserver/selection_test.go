package apiserver

import (
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metainternalversion "k8s.io/apimachinery/pkg/apis/meta/internalversion"
	"k8s.io/apimachinery/pkg/fields"
)

// Whatever a client writes in a selector, a name or a namespace becomes a
// NATS subject token or stream name only if it is an event id or a DNS
// label; anything else is a 400 before NATS is asked.
func TestHostileSelectorsAndNamespacesAreRefused(t *testing.T) {
	for _, sel := range []string{
		"eventID=a>b", "eventID=a.b", "eventID=*", "eventID=evt 1",
		"endpoint=crm.>", "endpoint=*", "endpoint=CRM", "endpoint=a_b",
		"metadata.name=evt_1", "metadata.name=evt_1.crm.x", "metadata.name=>.crm",
		"metadata.name=evt_1.crm,eventID=evt_2",
	} {
		fs, err := fields.ParseSelector(sel)
		if err != nil {
			t.Fatalf("%s: %v", sel, err)
		}
		_, err = selectionOf(&metainternalversion.ListOptions{FieldSelector: fs})
		if !apierrors.IsBadRequest(err) {
			t.Errorf("%s: got %v, want a 400", sel, err)
		}
	}
	for _, ns := range []string{"a.b", "a.>", "*", "A", "", "-a"} {
		if err := checkNamespace(ns); !apierrors.IsBadRequest(err) {
			t.Errorf("namespace %q: got %v, want a 400", ns, err)
		}
	}
	if err := checkNamespace("shop"); err != nil {
		t.Errorf("namespace shop: %v", err)
	}
	q, err := selectionOf(&metainternalversion.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", "evt_1.crm")})
	if err != nil || q.sel.EventID != "evt_1" || q.sel.Endpoint != "crm" {
		t.Errorf("metadata.name=evt_1.crm: got %+v, %v", q.sel, err)
	}
}
