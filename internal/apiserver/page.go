package apiserver

import (
	"cmp"
	"container/heap"
	"encoding/base64"
	"encoding/json"
	"slices"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metainternalversion "k8s.io/apimachinery/pkg/apis/meta/internalversion"
)

// position orders list items newest first, then by namespace and name,
// so that every page of a list continues where the last one ended.
type position struct {
	Time      int64  `json:"t"` // UnixNano of the item's latest change
	Namespace string `json:"ns"`
	Name      string `json:"n"`
}

func compare(a, b position) int {
	return cmp.Or(cmp.Compare(b.Time, a.Time), strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
}

// token is a continue token: where the last page ended, and the query it
// belongs to, so that it is not used with another one.
type token struct {
	After position `json:"after"`
	Query string   `json:"q"`
}

// query identifies a list for its continue tokens.
func query(namespace string, opts *metainternalversion.ListOptions) string {
	q := namespace
	if opts.FieldSelector != nil {
		q += "|" + opts.FieldSelector.String()
	}
	if opts.LabelSelector != nil {
		q += "|" + opts.LabelSelector.String()
	}
	return q
}

// pager keeps the page a list asks for while the items stream past it:
// those after the continue position, the first limit of them in order (a
// heap with the last of them on top), and a count of the rest. Its memory
// follows the page, not the log.
type pager[T any] struct {
	at    func(*T) position
	after *position
	limit int64
	query string
	items []T
	total int64
}

func newPager[T any](at func(*T) position, namespace string, opts *metainternalversion.ListOptions) (*pager[T], error) {
	p := &pager[T]{at: at, limit: opts.Limit, query: query(namespace, opts)}
	if opts.Continue != "" {
		var t token
		b, err := base64.RawURLEncoding.DecodeString(opts.Continue)
		if err != nil || json.Unmarshal(b, &t) != nil {
			return nil, apierrors.NewBadRequest("invalid continue token")
		}
		if t.Query != p.query {
			return nil, apierrors.NewBadRequest("the continue token belongs to another query: repeat the selectors and namespace of its first page")
		}
		p.after = &t.After
	}
	return p, nil
}

// offer considers one item (already matched against the selectors).
func (p *pager[T]) offer(item *T) {
	pos := p.at(item)
	if p.after != nil && compare(pos, *p.after) <= 0 {
		return
	}
	p.total++
	switch {
	case p.limit <= 0 || int64(len(p.items)) < p.limit:
		heap.Push((*byPosition[T])(p), *item)
	case compare(pos, p.at(&p.items[0])) < 0:
		p.items[0] = *item
		heap.Fix((*byPosition[T])(p), 0)
	}
}

// page is the page in order, the continue token of the next one and how
// many items remain after it.
func (p *pager[T]) page() (items []T, next string, remaining *int64) {
	slices.SortFunc(p.items, func(a, b T) int { return compare(p.at(&a), p.at(&b)) })
	if p.limit <= 0 || p.total <= p.limit {
		return p.items, "", nil
	}
	b, _ := json.Marshal(token{After: p.at(&p.items[len(p.items)-1]), Query: p.query})
	n := p.total - p.limit
	return p.items, base64.RawURLEncoding.EncodeToString(b), &n
}

// byPosition is the pager's heap: the item that goes last on top.
type byPosition[T any] pager[T]

func (h *byPosition[T]) Len() int { return len(h.items) }
func (h *byPosition[T]) Less(i, j int) bool {
	return compare(h.at(&h.items[i]), h.at(&h.items[j])) > 0
}
func (h *byPosition[T]) Swap(i, j int) { h.items[i], h.items[j] = h.items[j], h.items[i] }
func (h *byPosition[T]) Push(x any)    { h.items = append(h.items, x.(T)) }
func (h *byPosition[T]) Pop() any {
	x := h.items[len(h.items)-1]
	h.items = h.items[:len(h.items)-1]
	return x
}
