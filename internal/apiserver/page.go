package apiserver

import (
	"cmp"
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

// paginate sorts items, then returns the page that opts asks for (limit
// and continue), the continue token of the next page and how many items
// remain after it. The log has no snapshot to page through: an item that
// changes between two pages moves to the front and is not seen again by
// that walk (a later list shows it).
func paginate[T any](items []T, at func(T) position, namespace string, opts *metainternalversion.ListOptions) (page []T, next string, remaining *int64, err error) {
	slices.SortFunc(items, func(a, b T) int { return compare(at(a), at(b)) })
	q := query(namespace, opts)
	if opts.Continue != "" {
		var t token
		b, err := base64.RawURLEncoding.DecodeString(opts.Continue)
		if err != nil || json.Unmarshal(b, &t) != nil {
			return nil, "", nil, apierrors.NewBadRequest("invalid continue token")
		}
		if t.Query != q {
			return nil, "", nil, apierrors.NewBadRequest("the continue token belongs to another query: repeat the selectors and namespace of its first page")
		}
		i, _ := slices.BinarySearchFunc(items, t.After, func(item T, p position) int { return compare(at(item), p) })
		for i < len(items) && compare(at(items[i]), t.After) <= 0 {
			i++
		}
		items = items[i:]
	}
	if opts.Limit <= 0 || int64(len(items)) <= opts.Limit {
		return items, "", nil, nil
	}
	page = items[:opts.Limit]
	b, _ := json.Marshal(token{After: at(page[len(page)-1]), Query: q})
	n := int64(len(items)) - opts.Limit
	return page, base64.RawURLEncoding.EncodeToString(b), &n, nil
}
