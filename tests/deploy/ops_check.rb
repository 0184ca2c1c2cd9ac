# Checks cf-deployment ops files against the jobs' specs: every op is a replace or remove with
# a path, and every property an op sets on an idmint job is one that job's spec declares.
#
#   ruby ops_check.rb JOBS_DIR OPS_FILE...
require 'yaml'

jobs_dir, *ops_files = ARGV
abort "usage: ops_check.rb JOBS_DIR OPS_FILE..." if ops_files.empty?

declared = Dir.children(jobs_dir).to_h do |job|
  [job, YAML.safe_load(File.read(File.join(jobs_dir, job, 'spec')))['properties'].keys]
end

# The dotted names of the leaves of a nested properties hash.
def leaves(node, prefix)
  return [prefix] unless node.is_a?(Hash)
  node.flat_map { |k, v| leaves(v, prefix.empty? ? k.to_s : "#{prefix}.#{k}") }
end

failures = []
ops_files.each do |file|
  ops = YAML.safe_load(File.read(file))
  failures << "#{file}: not a list of operations" unless ops.is_a?(Array)
  Array(ops).each_with_index do |op, i|
    where = "#{file} op #{i + 1}"
    failures << "#{where}: type must be replace or remove" unless %w[replace remove].include?(op['type'])
    path = op['path'].to_s
    failures << "#{where}: no path" unless path.start_with?('/')
    job = path[%r{/jobs/name=(idmint-[a-z]+)}, 1]
    next unless job && declared.key?(job)
    # What the op sets under the job's properties, as dotted names.
    set =
      if (rest = path[%r{/jobs/name=#{job}\??/properties/(.*)$}, 1])
        leaves(op['value'], rest.delete('?').tr('/', '.'))
      elsif path.end_with?("name=#{job}?", "name=#{job}") && op['value'].is_a?(Hash)
        leaves(op['value']['properties'] || {}, '')
      else
        []
      end
    set.reject(&:empty?).each do |name|
      next if declared[job].include?(name)
      failures << "#{where}: #{job} has no property #{name}"
    end
  end
  # Jobs an op adds inside a new instance group.
  Array(ops).each_with_index do |op, i|
    next unless op['value'].is_a?(Hash)
    Array(op['value']['jobs']).each do |j|
      next unless declared.key?(j['name'])
      leaves(j['properties'] || {}, '').reject(&:empty?).each do |name|
        failures << "#{file} op #{i + 1}: #{j['name']} has no property #{name}" unless declared[j['name']].include?(name)
      end
    end
  end
end
abort failures.join("\n") unless failures.empty?
puts "#{ops_files.size} ops files agree with the job specs"
