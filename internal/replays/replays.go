// Package replays runs a WebhookReplay from a client's side, as the
// plugin and the console both do: create it, then read it until it ends
// or stalls.
package replays

import (
	"context"
	"fmt"
	"time"

	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
)

// Create creates a replay of spec in ns, named from prefix.
func Create(ctx context.Context, c client.Client, ns, prefix string, spec v1.WebhookReplaySpec) (*v1.WebhookReplay, error) {
	rp := &v1.WebhookReplay{ObjectMeta: metav1.ObjectMeta{Namespace: ns, GenerateName: prefix}, Spec: spec}
	if err := c.Create(ctx, rp); err != nil {
		return nil, fmt.Errorf("creating the replay: %w", err)
	}
	return rp, nil
}

// Wait reads rp every poll until it ends, or stalls (a missing endpoint,
// a selection over the limit), calling seen with each state read.
func Wait(ctx context.Context, c client.Client, rp *v1.WebhookReplay, poll time.Duration, seen func(*v1.WebhookReplay)) error {
	return wait.PollUntilContextCancel(ctx, poll, true, func(ctx context.Context) (bool, error) {
		if err := c.Get(ctx, client.ObjectKeyFromObject(rp), rp); err != nil {
			return false, fmt.Errorf("reading replay %s: %w", rp.Name, err)
		}
		if seen != nil {
			seen(rp)
		}
		if s := Stalled(rp); s != nil {
			return false, fmt.Errorf("replay %s stalled (%s): %s", rp.Name, s.Reason, s.Message)
		}
		return Ended(rp.Status.Phase), nil
	})
}

// CreateAndWait creates a replay and waits until it ends or stalls. The
// replay it returns is set whenever it was created, even with an error.
func CreateAndWait(ctx context.Context, c client.Client, ns, prefix string, spec v1.WebhookReplaySpec, poll time.Duration, seen func(*v1.WebhookReplay)) (*v1.WebhookReplay, error) {
	rp, err := Create(ctx, c, ns, prefix, spec)
	if err != nil {
		return nil, err
	}
	return rp, Wait(ctx, c, rp, poll, seen)
}

// Ended says whether a replay in phase p has finished.
func Ended(p v1.ReplayPhase) bool {
	return p == v1.ReplaySucceeded || p == v1.ReplayPartiallyFailed || p == v1.ReplayFailed
}

// Stalled is the replay's Stalled condition while it is true.
func Stalled(rp *v1.WebhookReplay) *metav1.Condition {
	if s := apimeta.FindStatusCondition(rp.Status.Conditions, v1.StalledCondition); s != nil && s.Status == metav1.ConditionTrue {
		return s
	}
	return nil
}

// WouldSend is how many events a finished dry run would send.
func WouldSend(dry *v1.WebhookReplay) int32 { return dry.Status.Matched - dry.Status.Skipped }
