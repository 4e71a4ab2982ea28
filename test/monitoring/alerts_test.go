// Package monitoring tests what Herald gives Prometheus and Grafana: the
// alerting rules (config/prometheus) with promtool as Prometheus loads them,
// the kustomize component that installs them, and the dashboard's queries.
package monitoring

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

const dir = "../../config/prometheus"

type ruleFile struct {
	Spec struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []struct {
				Alert string `json:"alert"`
			} `json:"rules"`
		} `json:"groups"`
	} `json:"spec"`
}

type unitTests struct {
	Tests []struct {
		Name       string `json:"name"`
		AlertTests []struct {
			Alertname string           `json:"alertname"`
			ExpAlerts []map[string]any `json:"exp_alerts"`
		} `json:"alert_rule_test"`
	} `json:"tests"`
}

// TestRules runs `promtool test rules` on rules_test.yaml against the
// PrometheusRule's groups.
func TestRules(t *testing.T) {
	promtool := os.Getenv("PROMTOOL")
	if promtool == "" {
		t.Fatal("PROMTOOL is not set: run `make test`, which builds promtool from the Go module proxy, or set it to a promtool binary")
	}
	raw, err := os.ReadFile(filepath.Join(dir, "rules.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	// Prometheus reads a PrometheusRule's spec as a rule file.
	var pr map[string]any
	if err := yaml.Unmarshal(raw, &pr); err != nil {
		t.Fatal(err)
	}
	groups, err := yaml.Marshal(pr["spec"])
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	tests, err := os.ReadFile(filepath.Join(dir, "rules_test.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"rules.yaml": groups, "rules_test.yaml": tests} {
		if err := os.WriteFile(filepath.Join(tmp, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(promtool, "test", "rules", "rules_test.yaml")
	cmd.Dir = tmp
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
	exported := exportedMetrics(t)
	for _, name := range regexp.MustCompile(`herald_[a-z_]+`).FindAllString(string(groups), -1) {
		if name = strings.TrimSuffix(name, "_bucket"); !exported[name] {
			t.Errorf("rules.yaml reads %s, which Herald does not export", name)
		}
	}
	check := exec.Command(promtool, "check", "rules", "rules.yaml")
	check.Dir = tmp
	if out, err := check.CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
}

// TestEveryAlertFiresAndStaysQuiet checks rules_test.yaml has, for each
// alert, a case where it fires and one where it does not.
func TestEveryAlertFiresAndStaysQuiet(t *testing.T) {
	var rules ruleFile
	var tests unitTests
	for name, into := range map[string]any{"rules.yaml": &rules, "rules_test.yaml": &tests} {
		raw, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.Unmarshal(raw, into); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, tc := range tests.Tests {
		for _, a := range tc.AlertTests {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			} else {
				quiet[a.Alertname] = true
			}
		}
	}
	var alerts []string
	for _, g := range rules.Spec.Groups {
		for _, r := range g.Rules {
			if r.Alert != "" {
				alerts = append(alerts, r.Alert)
			}
		}
	}
	if len(alerts) == 0 {
		t.Fatal("no alerts in rules.yaml")
	}
	for _, a := range alerts {
		if !fires[a] {
			t.Errorf("%s: no test shows it firing", a)
		}
		if !quiet[a] {
			t.Errorf("%s: no test shows it quiet", a)
		}
	}
	for a := range fires {
		if !slices.Contains(alerts, a) {
			t.Errorf("rules_test.yaml tests %s, which rules.yaml does not have", a)
		}
	}
}

// TestMonitoringOverlay checks config/monitoring installs Herald with its
// monitors and rules, named and placed as config/default's objects are.
func TestMonitoringOverlay(t *testing.T) {
	out, err := exec.Command("kubectl", "kustomize", "../../config/monitoring").Output()
	if err != nil {
		t.Fatalf("kubectl kustomize config/monitoring: %v", err)
	}
	want := map[string]string{
		"ServiceMonitor": "herald-controller-manager-metrics-monitor",
		"PodMonitor":     "herald-dispatcher-monitor",
		"PrometheusRule": "herald-alerts",
	}
	seen := map[string]bool{}
	for _, doc := range bytes.Split(out, []byte("\n---\n")) {
		var o struct {
			Kind     string `json:"kind"`
			Metadata struct {
				Name, Namespace string
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal(doc, &o); err != nil {
			t.Fatal(err)
		}
		seen[o.Kind+"/"+o.Metadata.Name] = true
		if _, ok := want[o.Kind]; ok && o.Metadata.Namespace != "herald-system" {
			t.Errorf("%s %s is in namespace %q, want herald-system", o.Kind, o.Metadata.Name, o.Metadata.Namespace)
		}
	}
	for kind, name := range want {
		if !seen[kind+"/"+name] {
			t.Errorf("config/monitoring has no %s %s", kind, name)
		}
	}
	for _, also := range []string{"Deployment/herald-controller-manager", "PodMonitor/herald-dispatcher-pool-monitor"} {
		if !seen[also] {
			t.Errorf("config/monitoring has no %s", also)
		}
	}
}
