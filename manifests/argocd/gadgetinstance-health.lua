-- Argo CD health check for gadget-operator.io/GadgetInstance and ClusterGadgetInstance (the same
-- status). Installed as resource.customizations.health.gadget-operator.io_GadgetInstance and
-- resource.customizations.health.gadget-operator.io_ClusterGadgetInstance in argocd-cm (see
-- argocd-cm-patch.yaml). Argo CD sets the global `obj` to the live object; the script returns
-- {status = Healthy | Progressing | Degraded | Suspended, message = ...}. Plain Lua 5.1.
local hs = {}

-- The first argument that is a non-empty string.
local function pick(...)
  for i = 1, select("#", ...) do
    local v = select(i, ...)
    if type(v) == "string" and v ~= "" then
      return v
    end
  end
  return nil
end

local function condition(status, wanted)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == wanted then
      return c
    end
  end
  return nil
end

local generation = 0
if obj.metadata ~= nil and obj.metadata.generation ~= nil then
  generation = obj.metadata.generation
end
local status = obj.status

-- A status written for an older spec says nothing about the current one.
if status == nil or status.observedGeneration == nil or status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. string.format("%d", generation)
  return hs
end

if (obj.spec ~= nil and obj.spec.suspend == true) or status.phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = pick(status.message, "Suspended: no gadget runs on any node")
  return hs
end

local ready = condition(status, "Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = pick(ready.message, status.message, "Running")
  return hs
end

local degraded = condition(status, "Degraded")
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = pick(degraded.message, status.message, "Degraded")
  return hs
end

if status.phase == "Failed" then
  hs.status = "Degraded"
  hs.message = pick(status.message, ready ~= nil and ready.message or nil, "Failed")
  return hs
end

hs.status = "Progressing"
hs.message = pick(ready ~= nil and ready.message or nil, status.message, "Waiting for the gadget to run on its nodes")
return hs
