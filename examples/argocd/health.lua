-- Argo CD health check for flowkeeper.io/IntegrationFlow.
-- Install as resource.customizations.health.flowkeeper.io_IntegrationFlow in argocd-cm (see README).
hs = {}
if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for Flowkeeper to observe the flow"
  return hs
end
-- Until Flowkeeper has acted on the latest spec, what the status says is about an older one.
if obj.metadata.generation ~= nil and obj.status.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for Flowkeeper to observe generation " .. tostring(obj.metadata.generation)
  return hs
end
local found = {}
for _, condition in ipairs(obj.status.conditions) do
  found[condition.type] = condition
end
local function describe(condition)
  if condition.message ~= nil and condition.message ~= "" then
    return condition.reason .. ": " .. condition.message
  end
  return condition.reason
end
-- A pause by hand (spec.paused, reason Manual) is intended: Suspended. Any other pause is Flowkeeper
-- stopping a broken flow (P1): Degraded, so it is not mistaken for a deliberate one.
if found["Paused"] ~= nil and found["Paused"].status == "True" then
  if found["Paused"].reason == "Manual" then
    hs.status = "Suspended"
    hs.message = describe(found["Paused"])
  else
    hs.status = "Degraded"
    hs.message = (obj.status.severity or "P1") .. " " .. describe(found["Paused"])
  end
  return hs
end
if found["Ready"] ~= nil and found["Ready"].status == "False" then
  hs.status = "Degraded"
  hs.message = describe(found["Ready"])
  return hs
end
if found["Healthy"] ~= nil and found["Healthy"].status == "False" then
  hs.status = "Degraded"
  hs.message = (obj.status.severity or "") .. " " .. describe(found["Healthy"])
  return hs
end
if found["Ready"] ~= nil and found["Ready"].status == "True" then
  hs.status = "Healthy"
  hs.message = "Phase " .. (obj.status.phase or "Running")
  return hs
end
hs.status = "Progressing"
hs.message = "Waiting for the flow to become ready"
return hs
