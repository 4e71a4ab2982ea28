package kubectlherald

import (
	"context"
	"errors"
	"fmt"
	"html"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
	"github.com/spf13/cobra"

	"github.com/herald-dev/herald/internal/console"
)

func consoleCommand(o *options) *cobra.Command {
	var port int
	var open bool
	cmd := &cobra.Command{
		Use:   "console [--port N] [--open=false]",
		Short: "Serve the web console on 127.0.0.1, as you",
		Long: `console serves Herald's web console on 127.0.0.1 with your own kubeconfig
identity, as kubectl proxy does: it shows exactly what your RBAC lets you
read, and offers a replay only where you may create one. It opens the
browser where there is one, and runs until interrupted.`,
		Example: `  kubectl herald console
  kubectl herald console -n shop --port 8042 --open=false`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := o.flags.ToRESTConfig()
			if err != nil {
				return err
			}
			ns, _, err := o.flags.ToRawKubeConfigLoader().Namespace()
			if err != nil {
				return fmt.Errorf("reading the namespace from kubeconfig: %w", err)
			}
			srv, err := console.New(cfg, console.Options{Namespace: ns, Log: stderrLogger(o)})
			if err != nil {
				return err
			}
			// Loopback only: the console acts with the user's credentials.
			ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
			if err != nil {
				return fmt.Errorf("listening on 127.0.0.1:%d: %w", port, err)
			}
			// The key makes the address the way in: other users of this
			// machine reach 127.0.0.1 too.
			url := "http://" + ln.Addr().String() + "/?key=" + srv.Key()
			fmt.Fprintf(o.streams.Out, "Herald console at %s (Ctrl-C stops it)\n", url)
			if open {
				stop := openBrowser(o, url)
				defer stop()
			}
			return serve(cmd.Context(), ln, srv.Handler())
		},
	}
	cmd.Flags().IntVar(&port, "port", 0, "port on 127.0.0.1 (0: any free one)")
	cmd.Flags().BoolVar(&open, "open", true, "open the console in the browser, where there is one")
	return cmd
}

func serve(ctx context.Context, ln net.Listener, h http.Handler) error {
	// Requests end with the command, so a dry run waiting on Ctrl-C
	// returns and deletes itself before the process exits.
	hs := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, BaseContext: func(net.Listener) context.Context { return ctx }}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = hs.Shutdown(sctx)
	}()
	err := hs.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		<-stopped
		return nil
	}
	return err
}

// openBrowser asks the desktop to open url, where there is a desktop; it
// says so when there is none, and the printed address is the way in. The
// browser gets a file (readable by this user only) that redirects to url,
// not url itself: a command line is visible to every user of the
// machine, and url carries the console's key. stop removes the file.
func openBrowser(o *options, url string) (stop func()) {
	var name string
	switch {
	case runtime.GOOS == "darwin":
		name = "open"
	case runtime.GOOS == "windows":
		name = "explorer"
	case os.Getenv("DISPLAY") != "" || os.Getenv("WAYLAND_DISPLAY") != "":
		name = "xdg-open"
	}
	path, err := exec.LookPath(name)
	if name == "" || err != nil {
		fmt.Fprintln(o.streams.ErrOut, "No browser to open here: open the address above.")
		return func() {}
	}
	f, err := os.CreateTemp("", "herald-console-*.html") // 0600
	if err != nil {
		fmt.Fprintf(o.streams.ErrOut, "Opening the browser: %v\n", err)
		return func() {}
	}
	stop = func() { _ = os.Remove(f.Name()) }
	_, err = fmt.Fprintf(f, `<!doctype html><meta http-equiv="refresh" content="0;url=%s"><a href="%s">Herald console</a>`, html.EscapeString(url), html.EscapeString(url))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		cmd := exec.Command(path, f.Name())
		if err = cmd.Start(); err == nil {
			go func() { _ = cmd.Wait() }() // reaped, not left a zombie
		}
	}
	if err != nil {
		fmt.Fprintf(o.streams.ErrOut, "Opening the browser: %v\n", err)
	}
	return stop
}

// stderrLogger logs the console's errors (never the user's credentials:
// it logs none) to the command's error stream.
func stderrLogger(o *options) logr.Logger {
	return funcr.New(func(prefix, args string) { fmt.Fprintln(o.streams.ErrOut, prefix, args) }, funcr.Options{})
}
