package appliance

import "fmt"

// Role changes as a table: what must hold, and what is done, to go from one role to another.
// rolePlan decides with no I/O; setRole checks the guards and carries out the actions, and
// when the new role cannot be entered it enters the old one again, so that a failed promotion
// leaves a secondary a secondary instead of a node that serves nothing.

// roleGuard is a condition checked before anything changes.
type roleGuard int

const (
	// guardNoSplitBrain: no split-brain with the peer is unresolved.
	guardNoSplitBrain roleGuard = iota + 1
	// guardConsistent: this copy is not the unfinished target of a synchronisation, nor known
	// to miss acknowledged writes.
	guardConsistent
)

// roleAction is one step of leaving or entering a role.
type roleAction int

const (
	actUnexport      roleAction = iota + 1 // frontends give the volume up (refused while open, unless forced)
	actClosePrimary                        // the engine stops serving and settles its activemap
	actStopSecondary                       // the running secondary session ends
	actCloseDevice                         // the local component is closed
	actOpenPrimary                         // open the component, start the engine, export the volume
	actOpenSecondary                       // open the component and check its metadata
)

// rolePlan is what a role change does: guards first, then the old role's actions (leave),
// then the new one's (enter).
type rolePlan struct {
	guards       []roleGuard
	leave, enter []roleAction
}

// planRole returns the plan for changing from → to; force skips the guards (the operator
// accepts the risk) but no action. Staying in a role is an empty plan.
func planRole(from, to Role, force bool) rolePlan {
	var p rolePlan
	if from == to {
		return p
	}
	if to == RolePrimary && !force {
		p.guards = []roleGuard{guardNoSplitBrain, guardConsistent}
	}
	switch from {
	case RolePrimary:
		p.leave = []roleAction{actUnexport, actClosePrimary, actCloseDevice}
	case RoleSecondary:
		p.leave = []roleAction{actStopSecondary, actCloseDevice}
	}
	switch to {
	case RolePrimary:
		p.enter = []roleAction{actOpenPrimary}
	case RoleSecondary:
		p.enter = []roleAction{actOpenSecondary}
	}
	return p
}

// setRole changes the resource's role as planRole says. It returns the role the resource had
// before; on an error the resource is in the role the error names (the old one, unless
// entering it again failed too: then init).
func (r *resource) setRole(to Role, force bool) (Role, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	from := r.role
	plan := planRole(from, to, force)
	for _, g := range plan.guards {
		if err := r.checkGuard(g); err != nil {
			return from, err
		}
	}
	for _, a := range plan.leave {
		if err := r.act(a, force); err != nil {
			return from, err
		}
	}
	if len(plan.leave) > 0 {
		r.role = RoleInit
	}
	if err := r.acts(plan.enter, force); err != nil {
		back := planRole(RoleInit, from, true).enter
		if rerr := r.acts(back, true); rerr != nil {
			r.log.Error().Err(rerr).Str("role", from.String()).Msg("unable to return to the previous role; the resource is init")
			return from, fmt.Errorf("%w; returning to %s failed too (%v): %s is init now", err, from, rerr, r.cfg.Name)
		}
		r.role = from
		return from, fmt.Errorf("%w (%s stays %s)", err, r.cfg.Name, from)
	}
	if from == to {
		return from, nil
	}
	r.role = to
	r.log.Info().Str("from", from.String()).Str("to", to.String()).Msgf("Role changed to %s.", to)
	r.d.hooks.run(r.cfg.Exec, "role", r.cfg.Name, from.String(), to.String())
	return from, nil
}

func (r *resource) acts(as []roleAction, force bool) error {
	for _, a := range as {
		if err := r.act(a, force); err != nil {
			return err
		}
	}
	return nil
}

func (r *resource) checkGuard(g roleGuard) error {
	switch g {
	case guardNoSplitBrain:
		r.evMu.Lock()
		sb := r.splitBrain
		r.evMu.Unlock()
		if sb {
			return fmt.Errorf("refusing to promote %s: a split-brain with the peer is unresolved (hast split-brain %s shows what diverged; hast resolve, or --force)", r.cfg.Name, r.cfg.Name)
		}
	case guardConsistent:
		return r.checkConsistent()
	}
	return nil
}

// act carries out one action (r.mu held).
func (r *resource) act(a roleAction, force bool) error {
	switch a {
	case actUnexport:
		if err := r.d.unexport(r.cfg.Name, force); err != nil {
			return fmt.Errorf("demote %s: %w", r.cfg.Name, err)
		}
	case actClosePrimary:
		if err := r.primary.Close(); err != nil {
			r.log.Warn().Err(err).Msg("closing primary")
		}
		r.primary, r.live = nil, nil
	case actStopSecondary:
		r.stopSecondaryLocked()
	case actCloseDevice:
		if r.dev != nil {
			r.dev.Close()
			r.dev = nil
		}
	case actOpenPrimary:
		return r.openPrimaryLocked()
	case actOpenSecondary:
		return r.openSecondaryLocked()
	}
	return nil
}
