package kubectlherald

import (
	"fmt"
	"io"
	"strings"

	v1 "github.com/herald-dev/herald/api/v1alpha1"
)

// progress draws a replay's progress: a bar redrawn in place on a
// terminal, a line per change elsewhere (a CI log, a pipe).
type progress struct {
	out     io.Writer
	tty     bool
	last    string
	started string // the replay's name, once created
}

func newProgress(out io.Writer) *progress { return &progress{out: out, tty: terminal(out)} }

const barWidth = 30

func (p *progress) show(s v1.WebhookReplayStatus) {
	done := s.Delivered + s.Superseded + s.Failed + s.Skipped
	line := fmt.Sprintf("%d/%d  delivered %d  superseded %d  failed %d  skipped %d  %s",
		done, s.Matched, s.Delivered, s.Superseded, s.Failed, s.Skipped, s.Phase)
	if line == p.last {
		return
	}
	p.last = line
	if !p.tty {
		fmt.Fprintln(p.out, line)
		return
	}
	filled := 0
	if s.Matched > 0 {
		filled = int(done) * barWidth / int(s.Matched)
	}
	fmt.Fprintf(p.out, "\r\x1b[K[%s%s] %s", strings.Repeat("#", filled), strings.Repeat("-", barWidth-filled), line)
}

// done ends the bar's line.
func (p *progress) done() {
	if p.tty && p.last != "" {
		fmt.Fprintln(p.out)
	}
}
