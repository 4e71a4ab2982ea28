package controller

import (
	"context"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/herald-dev/herald/internal/streams"
)

var (
	streamBytes = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "herald_stream_bytes",
		Help: "Bytes stored in each of Herald's streams (buckets as KV_<bucket>).",
	}, []string{"stream"})
	streamMaxBytes = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "herald_stream_max_bytes",
		Help: "Byte budget of each of Herald's streams; -1 means none.",
	}, []string{"stream"})
	streamMessages = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "herald_stream_messages",
		Help: "Messages stored in each of Herald's streams.",
	}, []string{"stream"})
)

func init() {
	metrics.Registry.MustRegister(streamBytes, streamMaxBytes, streamMessages)
}

// StorageMetrics reports how full each of Herald's streams is against its
// byte budget, so an alert fires before producers are refused (events) or
// the delivery log starts dropping its oldest entries.
type StorageMetrics struct {
	JS jetstream.JetStream
	// Every is how often the streams are read (default 30s).
	Every time.Duration

	reported map[string]bool // the streams the last pass set series for
}

// Start reads the streams until ctx ends.
func (s *StorageMetrics) Start(ctx context.Context) error {
	every := s.Every
	if every <= 0 {
		every = 30 * time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		s.observe(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// NeedLeaderElection is false: every replica can report storage.
func (s *StorageMetrics) NeedLeaderElection() bool { return false }

func (s *StorageMetrics) observe(ctx context.Context) {
	seen := map[string]bool{}
	lister := s.JS.ListStreams(ctx)
	for info := range lister.Info() {
		if !streams.Owned(info.Config.Name) {
			continue
		}
		seen[info.Config.Name] = true
		streamMaxBytes.WithLabelValues(info.Config.Name).Set(float64(info.Config.MaxBytes))
		streamBytes.WithLabelValues(info.Config.Name).Set(float64(info.State.Bytes))
		streamMessages.WithLabelValues(info.Config.Name).Set(float64(info.State.Msgs))
	}
	if err := lister.Err(); err != nil {
		// A partial list must not delete the series it missed.
		ctrl.LoggerFrom(ctx).V(1).Info("listing streams for storage metrics", "error", err.Error())
		return
	}
	// A namespace's streams go once it has no endpoints and they are
	// empty; so do their series.
	for name := range s.reported {
		if !seen[name] {
			streamMaxBytes.DeleteLabelValues(name)
			streamBytes.DeleteLabelValues(name)
			streamMessages.DeleteLabelValues(name)
		}
	}
	s.reported = seen
}
