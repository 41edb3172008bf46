package appliance

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"hast/replicate"
)

// Split-brain state survives a daemon restart: the report is kept in the state directory, and
// while it is there the resource is not promoted without --force.

func (r *resource) sbPath() string {
	return filepath.Join(r.d.opt.StateDir, r.name+".splitbrain.json")
}

func (r *resource) loadSplitBrain() {
	b, err := os.ReadFile(r.sbPath())
	if err != nil {
		return
	}
	var rep replicate.SplitBrainReport
	if err := json.Unmarshal(b, &rep); err != nil {
		r.log.Warn().Err(err).Str("file", r.sbPath()).Msg("unreadable split-brain report ignored")
		return
	}
	r.evMu.Lock()
	r.sbReport, r.splitBrain = &rep, true
	r.evMu.Unlock()
}

// recordSplitBrain keeps and persists a report.
func (r *resource) recordSplitBrain(rep *replicate.SplitBrainReport) {
	r.evMu.Lock()
	r.sbReport, r.splitBrain = rep, true
	r.evMu.Unlock()
	b, _ := json.MarshalIndent(rep, "", "  ")
	if err := os.MkdirAll(r.d.opt.StateDir, 0o700); err == nil {
		err = os.WriteFile(r.sbPath(), b, 0o600)
		if err != nil {
			r.log.Error().Err(err).Msg("unable to persist the split-brain report")
		}
	}
}

func (r *resource) clearSplitBrain() {
	r.evMu.Lock()
	had := r.sbReport != nil
	r.sbReport, r.splitBrain = nil, false
	r.evMu.Unlock()
	if had {
		os.Remove(r.sbPath())
		r.log.Info().Msg("split-brain cleared: the nodes are connected again")
	}
}

// captureSplitBrain takes the primary engine's report after a split-brain event.
func (r *resource) captureSplitBrain() {
	r.mu.Lock()
	var rep *replicate.SplitBrainReport
	if r.role == RolePrimary && r.primary != nil {
		rep = r.primary.SplitBrain()
	}
	r.mu.Unlock()
	if rep != nil {
		r.recordSplitBrain(rep)
	}
}

func (r *resource) splitBrainReport() *replicate.SplitBrainReport {
	r.evMu.Lock()
	defer r.evMu.Unlock()
	if r.sbReport == nil {
		return nil
	}
	rep := *r.sbReport
	return &rep
}

// resolve chooses the side whose data survives a split-brain. keep "remote" is run on the
// node that loses: its next session saves its divergent extents and takes the peer's. keep
// "local" is run on the winner, which must be primary: it tells the peer on its next
// connection.
func (r *resource) resolve(keep string) (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch keep {
	case "local":
		if r.role != RolePrimary {
			return "", fmt.Errorf("%s is %s here: to keep this node's data it must be primary (hast role primary %s, then resolve)", r.name, r.role, r.name)
		}
		r.primary.ResolveKeepLocal()
		return fmt.Sprintf("%s: on the next connection the peer saves its divergent extents and takes this node's data", r.name), nil
	case "remote":
		if r.role == RolePrimary {
			return "", fmt.Errorf("%s is primary here: demote it first (hast role secondary %s), then resolve", r.name, r.name)
		}
		r.evMu.Lock()
		r.discardNext = true
		r.evMu.Unlock()
		return fmt.Sprintf("%s: on the next connection this node saves its divergent extents under %s and takes the peer's data", r.name, r.d.opt.StateDir), nil
	}
	return "", fmt.Errorf("--keep must be local or remote, not %q", keep)
}

// ----- CLI -----

// SplitBrain fetches a resource's split-brain report (nil when there is none).
func (cl *Client) SplitBrain(resource string) (*replicate.SplitBrainReport, error) {
	var rep struct {
		Report *replicate.SplitBrainReport `json:"report"`
	}
	err := cl.do("GET", "/splitbrain?resource="+resource, nil, &rep)
	return rep.Report, err
}

// Resolve asks the daemon to resolve a split-brain keeping "local" or "remote" data.
func (cl *Client) Resolve(resource, keep string) (string, error) {
	var out map[string]string
	err := cl.do("POST", "/resolve", map[string]string{"resource": resource, "keep": keep}, &out)
	return out["result"], err
}

func (c *CLI) splitBrain(args []string) error {
	cm := c.flags("split-brain")
	cm.fs.StringVar(&cm.output, "o", "text", "output format: text or json")
	if err := cm.parse(args); err != nil {
		return err
	}
	if cm.fs.NArg() != 1 {
		fmt.Fprint(c.Stderr, usage)
		return exitErr(exUsage, errQuiet)
	}
	cl, err := c.client(cm)
	if err != nil {
		return err
	}
	rep, err := cl.SplitBrain(cm.fs.Arg(0))
	if err != nil {
		return err
	}
	if cm.output == "json" {
		enc := json.NewEncoder(c.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	if rep == nil {
		fmt.Fprintf(c.Stdout, "%s: no split-brain recorded\n", cm.fs.Arg(0))
		return nil
	}
	printSplitBrain(c.Stdout, rep)
	return nil
}

func printSplitBrain(w io.Writer, rep *replicate.SplitBrainReport) {
	fmt.Fprintf(w, "%s: split-brain detected %s\n", rep.Resource, rep.Detected.Format(time.RFC3339))
	fmt.Fprintf(w, "  both nodes were primary and wrote; nothing has been overwritten.\n")
	fmt.Fprintf(w, "  this node changed: %d extents, %d bytes %s\n", len(rep.Local), rep.Bytes(rep.Local), extentList(rep.Local))
	if rep.RemoteKnown {
		both := rep.Both()
		fmt.Fprintf(w, "  the peer changed:  %d extents, %d bytes %s\n", len(rep.Remote), rep.Bytes(rep.Remote), extentList(rep.Remote))
		fmt.Fprintf(w, "  changed on both:   %d extents, %d bytes %s\n", len(both), rep.Bytes(both), extentList(both))
	} else {
		fmt.Fprintf(w, "  the peer changed:  unknown (it did not send its map); resolving copies every extent\n")
	}
	fmt.Fprintf(w, "  extent size %d bytes\n", rep.ExtentSize)
	fmt.Fprintf(w, "To keep this node's data: hast resolve %s --keep local   (here, as primary)\n", rep.Resource)
	fmt.Fprintf(w, "To keep the peer's data:  hast resolve %s --keep remote  (here, as secondary)\n", rep.Resource)
	fmt.Fprintf(w, "The losing side's divergent extents are saved to a file before they are replaced.\n")
}

func extentList(es []int) string {
	if len(es) == 0 {
		return ""
	}
	const max = 16
	s := fmt.Sprint(es)
	if len(es) > max {
		s = fmt.Sprint(es[:max])
		s = s[:len(s)-1] + " …]"
	}
	return s
}

func (c *CLI) resolve(args []string) error {
	cm := c.flags("resolve")
	keep := cm.fs.String("keep", "", "whose data survives: local or remote")
	if err := cm.parse(args); err != nil {
		return err
	}
	if cm.fs.NArg() != 1 || (*keep != "local" && *keep != "remote") {
		fmt.Fprint(c.Stderr, usage)
		return exitErr(exUsage, errors.New("usage: hast resolve NAME --keep local|remote"))
	}
	cl, err := c.client(cm)
	if err != nil {
		return err
	}
	msg, err := cl.Resolve(cm.fs.Arg(0), *keep)
	if err != nil {
		return err
	}
	fmt.Fprintln(c.Stdout, msg)
	return nil
}
