// Command images packs static binaries onto an empty base as image tarballs
// that containerd imports (`ctr images import`): the e2e cluster
// (hack/cluster) can pull nothing, so every image it runs is built here.
//
// Each image has one layer: a distroless-like skeleton (/etc/passwd and
// /etc/group with root and nonroot 65532, /tmp) plus the files given. Every
// timestamp is fixed, so the same binaries give the same image ID and a
// re-import of an unchanged image changes nothing.
//
//	images -o herald.tar -t herald:e2e -f bin/herald=/herald \
//	       -entrypoint /herald -user 65532:65532
package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// epoch is every file's and the image's time: builds are reproducible.
var epoch = time.Unix(0, 0).UTC()

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(s string) error { *l = append(*l, s); return nil }

func main() {
	var tags, files, dirs, env list
	out := flag.String("o", "", "image tarball to write")
	flag.Var(&tags, "t", "image reference, e.g. herald:e2e (repeatable)")
	flag.Var(&files, "f", "SRC=DST[:MODE]: copy file SRC to DST in the image, mode in octal (default 0755) (repeatable)")
	flag.Var(&dirs, "d", "DST[:MODE[:UID:GID]]: a directory in the image (default 0755, root) (repeatable)")
	flag.Var(&env, "env", "KEY=VALUE in the image's environment (repeatable)")
	entrypoint := flag.String("entrypoint", "", "entrypoint, comma-separated")
	user := flag.String("user", "", "user[:group] the image runs as")
	flag.Parse()
	if *out == "" || len(tags) == 0 || len(files) == 0 {
		fmt.Fprintln(os.Stderr, "usage: images -o OUT.tar -t REF -f SRC=DST [-d DIR] [-entrypoint A,B] [-user U:G] [-env K=V]")
		os.Exit(2)
	}
	if err := pack(*out, tags, files, dirs, env, *entrypoint, *user); err != nil {
		fmt.Fprintln(os.Stderr, "images:", err)
		os.Exit(1)
	}
}

func pack(out string, tags, files, dirs, env []string, entrypoint, user string) error {
	layer, err := buildLayer(files, dirs)
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Created = v1.Time{Time: epoch}
	cf.Config.User = user
	cf.Config.WorkingDir = "/"
	cf.Config.Env = append([]string{"PATH=/usr/local/bin:/usr/bin:/bin"}, env...)
	if entrypoint != "" {
		cf.Config.Entrypoint = strings.Split(entrypoint, ",")
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return err
	}
	refs := map[name.Reference]v1.Image{}
	for _, t := range tags {
		tag, err := name.NewTag(t)
		if err != nil {
			return err
		}
		refs[tag] = img
	}
	tmp := out + ".tmp"
	if err := tarball.MultiRefWriteToFile(tmp, refs); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, out)
}

// entry is one file or directory of the layer.
type entry struct {
	hdr *tar.Header
	src string // file to copy the content from; "" for directories and inline files
	raw []byte // inline content
}

func buildLayer(files, dirs []string) (v1.Layer, error) {
	entries := map[string]*entry{}
	dir := func(p string, mode int64, uid, gid int) {
		entries[p] = &entry{hdr: &tar.Header{Typeflag: tar.TypeDir, Name: p + "/", Mode: mode, Uid: uid, Gid: gid}}
	}
	// Parents of everything get a plain root directory unless given.
	parents := func(p string) {
		for d := path.Dir(p); d != "/" && d != "."; d = path.Dir(d) {
			if _, ok := entries[strings.TrimPrefix(d, "/")]; !ok {
				dir(strings.TrimPrefix(d, "/"), 0o755, 0, 0)
			}
		}
	}
	inline := func(p, content string, mode int64) {
		parents("/" + p)
		entries[p] = &entry{hdr: &tar.Header{Typeflag: tar.TypeReg, Name: p, Mode: mode, Size: int64(len(content))}, raw: []byte(content)}
	}
	// The distroless skeleton: Go's os/user and programs that log their
	// user find root and nonroot; /tmp is where os.TempDir points.
	inline("etc/passwd", "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n", 0o644)
	inline("etc/group", "root:x:0:\nnonroot:x:65532:\n", 0o644)
	dir("tmp", 0o1777, 0, 0)
	dir("home", 0o755, 0, 0)
	dir("home/nonroot", 0o700, 65532, 65532)

	for _, d := range dirs {
		parts := strings.Split(d, ":")
		p := strings.Trim(parts[0], "/")
		mode, uid, gid := int64(0o755), 0, 0
		var err error
		if len(parts) > 1 {
			if mode, err = strconv.ParseInt(parts[1], 8, 64); err != nil {
				return nil, fmt.Errorf("-d %s: %w", d, err)
			}
		}
		if len(parts) == 4 {
			if uid, err = strconv.Atoi(parts[2]); err != nil {
				return nil, fmt.Errorf("-d %s: %w", d, err)
			}
			if gid, err = strconv.Atoi(parts[3]); err != nil {
				return nil, fmt.Errorf("-d %s: %w", d, err)
			}
		}
		parents("/" + p)
		dir(p, mode, uid, gid)
	}
	for _, f := range files {
		src, dst, ok := strings.Cut(f, "=")
		if !ok {
			return nil, fmt.Errorf("-f %s: want SRC=DST[:MODE]", f)
		}
		mode := int64(0o755)
		if d, m, ok := strings.Cut(dst, ":"); ok {
			var err error
			if mode, err = strconv.ParseInt(m, 8, 64); err != nil {
				return nil, fmt.Errorf("-f %s: %w", f, err)
			}
			dst = d
		}
		st, err := os.Stat(src)
		if err != nil {
			return nil, err
		}
		if !st.Mode().IsRegular() {
			return nil, fmt.Errorf("-f %s: not a regular file", f)
		}
		p := strings.Trim(dst, "/")
		parents("/" + p)
		entries[p] = &entry{hdr: &tar.Header{Typeflag: tar.TypeReg, Name: p, Mode: mode, Size: st.Size()}, src: src}
	}

	// Sorted names make the tar, and so the image, the same every time.
	names := make([]string, 0, len(entries))
	for n := range entries {
		names = append(names, n)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		e := entries[n]
		e.hdr.ModTime, e.hdr.Format = epoch, tar.FormatPAX
		if err := tw.WriteHeader(e.hdr); err != nil {
			return nil, err
		}
		switch {
		case e.raw != nil:
			if _, err := tw.Write(e.raw); err != nil {
				return nil, err
			}
		case e.src != "":
			if err := copyFile(tw, e.src, e.hdr.Size); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	}, tarball.WithCompressionLevel(gzip.BestSpeed))
}

func copyFile(w io.Writer, src string, size int64) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	n, err := io.Copy(w, f)
	if err == nil && n != size {
		err = fmt.Errorf("%s changed size while being packed", src)
	}
	return err
}
