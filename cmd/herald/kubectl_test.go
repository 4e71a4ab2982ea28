package main

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

func TestAsPluginByItsName(t *testing.T) {
	for argv0, want := range map[string]bool{
		"kubectl-herald": true, "/usr/local/bin/kubectl-herald": true, `C:\bin\kubectl-herald.exe`: true,
		"herald": false, "/bin/herald": false, "kubectl-herald-dev": false,
	} {
		if got := asPlugin(strings.ReplaceAll(argv0, `\`, "/")); got != want {
			t.Errorf("asPlugin(%q) = %v, want %v", argv0, got, want)
		}
	}
}

// TestKrewManifest renders .krew.yaml as krew-release-bot would and checks
// that krew would install the plugin under its name, from the archives
// `make krew-archives` builds, for every platform it builds.
func TestKrewManifest(t *testing.T) {
	raw, err := os.ReadFile("../../.krew.yaml")
	if err != nil {
		t.Fatal(err)
	}
	const tag = "v1.2.3"
	uris := regexp.MustCompile(`\{\{\s*addURIAndSha "([^"]+)" \.TagName\s*\}\}`)
	rendered := uris.ReplaceAllString(string(raw), "uri: $1\n    sha256: 0000")
	rendered = regexp.MustCompile(`\{\{\s*\.TagName\s*\}\}`).ReplaceAllString(rendered, tag)
	var m struct {
		Kind     string                `json:"kind"`
		Metadata struct{ Name string } `json:"metadata"`
		Spec     struct {
			Version   string `json:"version"`
			Platforms []struct {
				Selector struct {
					MatchLabels map[string]string `json:"matchLabels"`
				} `json:"selector"`
				URI string `json:"uri"`
				Bin string `json:"bin"`
			} `json:"platforms"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal([]byte(rendered), &m); err != nil {
		t.Fatalf("the rendered manifest is not YAML: %v\n%s", err, rendered)
	}
	if m.Kind != "Plugin" || m.Metadata.Name != strings.TrimPrefix(pluginName, "kubectl-") || m.Spec.Version != tag {
		t.Errorf("kind %q, name %q, version %q: want Plugin, herald, %s", m.Kind, m.Metadata.Name, m.Spec.Version, tag)
	}
	makefile, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	line := regexp.MustCompile(`(?m)^KREW_PLATFORMS := (.*)$`).FindSubmatch(makefile)
	if line == nil {
		t.Fatal("no KREW_PLATFORMS in the Makefile")
	}
	built := strings.Fields(string(line[1]))
	var listed []string
	for _, p := range m.Spec.Platforms {
		osArch := p.Selector.MatchLabels["os"] + "/" + p.Selector.MatchLabels["arch"]
		listed = append(listed, osArch)
		if p.Bin != pluginName {
			t.Errorf("%s: bin %q, want %q", osArch, p.Bin, pluginName)
		}
		want := "/kubectl-herald_" + tag + "_" + strings.ReplaceAll(osArch, "/", "_") + ".tar.gz"
		if !strings.HasSuffix(p.URI, want) || !strings.Contains(p.URI, "/"+tag+"/") {
			t.Errorf("%s: uri %q, want the archive …%s of release %s", osArch, p.URI, want, tag)
		}
	}
	slices.Sort(listed)
	slices.Sort(built)
	if !slices.Equal(listed, built) {
		t.Errorf("the manifest lists %v, make krew-archives builds %v", listed, built)
	}
}
