package kubectlherald

import (
	"io"
	"strings"
	"unicode/utf8"

	"k8s.io/cli-runtime/pkg/printers"
)

// A cell is a table's text with a colour for terminals. Every coloured
// word is also a word, so nothing needs colour to be read.
type cell struct{ text, colour string }

func plain(t string) cell  { return cell{text: t} }
func red(t string) cell    { return cell{t, "31"} }
func yellow(t string) cell { return cell{t, "33"} }
func green(t string) cell  { return cell{t, "32"} }
func bold(t string) cell   { return cell{t, "1"} }

func redIf(b bool, t string) cell {
	if b {
		return red(t)
	}
	return plain(t)
}

func yellowIf(b bool, t string) cell {
	if b {
		return yellow(t)
	}
	return plain(t)
}

// table aligns columns as kubectl does (three spaces apart), measuring
// the text without its colour codes, which text/tabwriter would count.
type table struct{ rows [][]cell }

func (t *table) add(cells ...cell) { t.rows = append(t.rows, cells) }

// header adds an upper-case, bold header row.
func (t *table) header(names ...string) {
	cells := make([]cell, len(names))
	for i, n := range names {
		cells[i] = bold(strings.ToUpper(n))
	}
	t.add(cells...)
}

func (t *table) write(w io.Writer, colour bool) error {
	var widths []int
	for _, r := range t.rows {
		for i := range r {
			// Receivers write errors and answers: none of it may steer
			// the terminal.
			r[i].text = printers.EscapeTerminal(r[i].text)
		}
		for i, c := range r {
			if i == len(widths) {
				widths = append(widths, 0)
			}
			widths[i] = max(widths[i], utf8.RuneCountInString(c.text))
		}
	}
	var b strings.Builder
	for _, r := range t.rows {
		for i, c := range r {
			if colour && c.colour != "" {
				b.WriteString("\x1b[" + c.colour + "m" + c.text + "\x1b[0m")
			} else {
				b.WriteString(c.text)
			}
			if i < len(r)-1 {
				b.WriteString(strings.Repeat(" ", widths[i]-utf8.RuneCountInString(c.text)+3))
			}
		}
		b.WriteByte('\n')
	}
	_, err := io.WriteString(w, b.String())
	return err
}
