package console

import (
	"fmt"
	"html/template"
	"slices"
	"strings"
	"time"

	deliveryv1 "github.com/herald-dev/herald/api/delivery/v1alpha1"
)

// chart is an SVG drawn on the server, with the same figures in words
// for whoever cannot see it.
type chart struct {
	SVG     template.HTML
	Summary string
}

const (
	chartMinutes = 60
	chartW       = 720
	chartH       = 150
	chartLeft    = 52 // room for the y axis labels
	chartBottom  = 18 // and for the x axis labels
)

// minute is what one minute of the chart holds.
type minute struct {
	delivered, retrying, dead int
	latencies                 []time.Duration
}

// charts bins deliveries by the minute of their latest attempt over the
// hour before now (sixty minutes, the last one the current, partial one): attempts by outcome, and the receiver's latency. The
// delivery API lists one row per delivery (its latest attempt), so an
// event retried three times in the hour counts once, where it stands.
func charts(ds []deliveryv1.WebhookDelivery, now time.Time) (attempts, latency chart) {
	start := now.Truncate(time.Minute).Add(-(chartMinutes - 1) * time.Minute)
	var mins [chartMinutes]minute
	var total minute
	for i := range ds {
		st := &ds[i].Status
		if st.LastAttemptTime == nil {
			continue // not tried yet
		}
		last := st.LastAttemptTime.Time
		if last.Before(start) {
			continue
		}
		// A cluster clock ahead of this machine's: the newest minute.
		if last.After(now) {
			last = now
		}
		m := &mins[int(last.Sub(start)/time.Minute)]
		switch st.Phase {
		case deliveryv1.PhaseSent:
			m.delivered++
			total.delivered++
		case deliveryv1.PhaseRetrying:
			m.retrying++
			total.retrying++
		case deliveryv1.PhaseFailed:
			m.dead++
			total.dead++
		default:
			continue // superseded: nothing was sent
		}
		if st.LastLatency != nil {
			m.latencies = append(m.latencies, st.LastLatency.Duration)
			total.latencies = append(total.latencies, st.LastLatency.Duration)
		}
	}
	attempts = chart{
		SVG:     attemptsSVG(&mins, start),
		Summary: fmt.Sprintf("Last hour: %d delivered, %d retrying, %d dead.", total.delivered, total.retrying, total.dead),
	}
	latency = chart{SVG: latencySVG(&mins, start), Summary: "Last hour: no answers timed."}
	if n := len(total.latencies); n > 0 {
		slices.Sort(total.latencies)
		latency.Summary = fmt.Sprintf("Last hour: p50 %s, p99 %s, slowest %s over %d answers.",
			short(pct(total.latencies, 0.5)), short(pct(total.latencies, 0.99)), short(total.latencies[n-1]), n)
	}
	return attempts, latency
}

// pct is the q quantile of sorted ds.
func pct(sorted []time.Duration, q float64) time.Duration {
	return sorted[min(len(sorted)-1, int(q*float64(len(sorted))))]
}

// short prints a latency to the precision a person reads it at.
func short(d time.Duration) string {
	switch {
	case d >= time.Second:
		return d.Round(10 * time.Millisecond).String()
	case d >= 100*time.Millisecond:
		return d.Round(time.Millisecond).String()
	case d >= time.Millisecond:
		return d.Round(100 * time.Microsecond).String()
	}
	return d.Round(time.Microsecond).String()
}

// The outcomes differ by pattern as well as colour, so the chart reads
// in grey too.
const chartDefs = `<defs>` +
	`<pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="6" height="6" fill="#f6c344"/><line x1="0" y1="0" x2="0" y2="6" stroke="#7a5b00" stroke-width="2"/></pattern>` +
	`<pattern id="dots" width="5" height="5" patternUnits="userSpaceOnUse"><rect width="5" height="5" fill="#d33"/><circle cx="2.5" cy="2.5" r="1.3" fill="#fff"/></pattern>` +
	`</defs>`

var outcomeFills = [3]string{"#2e7d32", "url(#hatch)", "url(#dots)"}

func svgOpen(b *strings.Builder, label string) {
	fmt.Fprintf(b, `<svg class="chart" viewBox="0 0 %d %d" role="img" aria-label="%s" xmlns="http://www.w3.org/2000/svg">`, chartW, chartH, template.HTMLEscapeString(label))
	b.WriteString(chartDefs)
}

// axes draws the frame, the y axis from 0 to top and the time marks.
func axes(b *strings.Builder, top string) {
	plotH := chartH - chartBottom
	fmt.Fprintf(b, `<line x1="%d" y1="0" x2="%d" y2="%d" stroke="#888"/>`, chartLeft, chartLeft, plotH)
	fmt.Fprintf(b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#888"/>`, chartLeft, plotH, chartW, plotH)
	fmt.Fprintf(b, `<text x="%d" y="10" text-anchor="end" font-size="10">%s</text>`, chartLeft-4, template.HTMLEscapeString(top))
	fmt.Fprintf(b, `<text x="%d" y="%d" text-anchor="end" font-size="10">0</text>`, chartLeft-4, plotH)
	for i, label := range []string{"-60m", "-45m", "-30m", "-15m", "now"} {
		x := chartLeft + i*(chartW-chartLeft)/4
		anchor := "middle"
		if i == 4 {
			anchor = "end"
		}
		fmt.Fprintf(b, `<text x="%d" y="%d" text-anchor="%s" font-size="10">%s</text>`, x, chartH-4, anchor, label)
	}
}

func attemptsSVG(mins *[chartMinutes]minute, start time.Time) template.HTML {
	peak := 1
	for _, m := range mins {
		peak = max(peak, m.delivered+m.retrying+m.dead)
	}
	var b strings.Builder
	svgOpen(&b, "attempts per minute by outcome, last hour")
	axes(&b, fmt.Sprintf("%d/min", peak))
	plotH := float64(chartH - chartBottom)
	bw := float64(chartW-chartLeft) / chartMinutes
	for i, m := range mins {
		counts := [3]int{m.delivered, m.retrying, m.dead}
		if counts == [3]int{} {
			continue
		}
		at := start.Add(time.Duration(i) * time.Minute)
		fmt.Fprintf(&b, `<g><title>%s: %d delivered, %d retrying, %d dead</title>`, at.Format("15:04"), m.delivered, m.retrying, m.dead)
		y := plotH
		for k, n := range counts {
			if n == 0 {
				continue
			}
			h := plotH * float64(n) / float64(peak)
			y -= h
			fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s" stroke="#333" stroke-width="0.3"/>`,
				float64(chartLeft)+float64(i)*bw+0.5, y, bw-1, h, outcomeFills[k])
		}
		b.WriteString(`</g>`)
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String()) //nolint:gosec // built here from numbers and escaped labels
}

func latencySVG(mins *[chartMinutes]minute, start time.Time) template.HTML {
	var peak time.Duration
	p50s, maxes := make([]time.Duration, chartMinutes), make([]time.Duration, chartMinutes)
	for i := range mins {
		l := mins[i].latencies
		if len(l) == 0 {
			p50s[i], maxes[i] = -1, -1
			continue
		}
		slices.Sort(l)
		p50s[i], maxes[i] = pct(l, 0.5), l[len(l)-1]
		peak = max(peak, maxes[i])
	}
	peak = max(peak, time.Millisecond)
	var b strings.Builder
	svgOpen(&b, "receiver latency per minute (median and slowest), last hour")
	axes(&b, short(peak))
	plotH := float64(chartH - chartBottom)
	bw := float64(chartW-chartLeft) / chartMinutes
	line := func(vals []time.Duration, dash, name string) {
		var pts []string
		flush := func() {
			if len(pts) > 0 {
				fmt.Fprintf(&b, `<polyline fill="none" stroke="#1565c0" stroke-width="2" stroke-dasharray="%s" points="%s"/>`, dash, strings.Join(pts, " "))
			}
			pts = nil
		}
		for i, v := range vals {
			if v < 0 {
				flush() // no answers that minute: a gap, not a zero
				continue
			}
			x := float64(chartLeft) + (float64(i)+0.5)*bw
			y := plotH - plotH*float64(v)/float64(peak)
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x, y))
			fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="2" fill="#1565c0"><title>%s %s %s</title></circle>`,
				x, y, start.Add(time.Duration(i)*time.Minute).Format("15:04"), name, short(v))
		}
		flush()
	}
	line(p50s, "none", "median")
	line(maxes, "4 3", "slowest")
	b.WriteString(`</svg>`)
	return template.HTML(b.String()) //nolint:gosec // built here from numbers and escaped labels
}
